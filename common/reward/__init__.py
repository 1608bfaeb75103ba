"""The reward: reward functions, the reward model's forward, re-tokenizing for its tokenizer, weighted terms.

May import: common.prompts, common.train, common.generate, common.model, common.config, common.device, common.util."""
