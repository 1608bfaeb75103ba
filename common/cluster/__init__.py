"""Ray: starting or joining it, placing roles, the worker groups and their typed handles, the workers each rank runs.

May import: every package but common.run."""
