"""Weights on disk: this project's checkpoint format, Hugging Face folders and conversion both ways.

May import: common.model, common.config, common.device, common.util."""
