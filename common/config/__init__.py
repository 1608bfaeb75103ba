"""The recipe config: its typed schema, loading with overlays and overrides, validation, role questions, the architecture and dtype names.

May import: common.util."""
