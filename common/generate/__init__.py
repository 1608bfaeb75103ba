"""Sampling responses: prefill and KV-cache decode through Megatron's layers, keyed token draws.

May import: common.model, common.config, common.device, common.util."""
