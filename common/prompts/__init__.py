"""Prompts: tokenizers and chat templates, prompt files and the seeded prompt stream, prepared datasets, fixed responses.

May import: common.config, common.util."""
