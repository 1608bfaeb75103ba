"""The DPO update: pair selection, the loss, padded sequences, log-probs, micro-batch schedules, the optimizer, health checks.

May import: common.model, common.config, common.device, common.util."""
