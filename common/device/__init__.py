"""Device specifics (CPU / CUDA / Ascend NPU) and the one module of Megatron-core CPU patches.

May import: common.config, common.util."""
