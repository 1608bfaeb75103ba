"""Llama-3 as a Megatron-core GPT model, its attention, where each weight lives, and the model-parallel world.

May import: common.config, common.device, common.util."""
