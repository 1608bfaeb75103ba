"""What every checkpoint reader offers once it has ``full(name)``: the whole state dict, and
``reader[name]`` (a mapping of full tensors, as ``common.weights.convert.iter_shards`` takes)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from common.config.arch import LlamaArch
from common.model.weight_layout import megatron_param_names

Progress = Callable[[int], None] | None  # called with the number of tensors just done


class FullTensors:
    arch: LlamaArch
    reward: bool

    def full(self, name: str) -> torch.Tensor:  # the full (TP=1, unpadded) tensor of parameter `name`
        raise NotImplementedError

    def full_state_dict(self, progress: Progress = None) -> dict[str, torch.Tensor]:
        out = {}
        for name in megatron_param_names(self.arch, reward=self.reward):
            out[name] = self.full(name)
            if progress:
                progress(1)
        return out

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.full(name)
