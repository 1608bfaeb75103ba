"""What a Hugging Face policy's config.json implies beyond its weights, applied to our model.

- ``source_hf_config(load)``: the HF config.json a ``load`` path came from (a HF directory's own,
  or the ``hf_config.json`` a converted checkpoint kept), so the trained actor's export re-emits it.
- ``pad_token_id``: when the config sets it, transformers builds ``nn.Embedding(..., padding_idx=
  pad_token_id)``. ``padding_idx`` means the embedding *lookup* of that id passes no gradient to its
  row; HF and TRL never update it through the input side. Some SFT checkpoints set it to a real
  token (Llama 3's ``<|eot_id|>``, SmolLM2's ``<|im_end|>``), which occurs in every prompt, so a
  trainer that ignores it trains a different model. ``stop_lookup_gradient`` reproduces exactly
  that: the lookup output at positions holding the id is detached. With tied embeddings the row
  still gets the output layer's gradient, as in HF, where ``lm_head.weight`` is the same tensor.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def source_hf_config(load: str | None) -> dict | None:
    """The HF config.json behind a ``*.load`` path (None for random init or a checkpoint without one)."""
    if load is None:
        return None
    path = Path(load)
    for name in ("hf_config.json", "config.json"):  # project checkpoint, then HF directory
        if (path / name).is_file() and (name == "config.json" or (path / "meta.json").is_file()):
            return json.loads((path / name).read_text())
    return None


def pad_token_id(hf_config: dict | None) -> int | None:
    """The ``padding_idx`` transformers would give the input embedding (None: no frozen row)."""
    if not hf_config:
        return None
    pad = hf_config.get("pad_token_id")
    if isinstance(pad, list):  # transformers accepts a list; nn.Embedding takes the int
        pad = pad[0] if pad else None
    return None if pad is None else int(pad)


def stop_lookup_gradient(gpt, pad_id: int) -> None:
    """HF ``padding_idx`` semantics on a Megatron GPTModel (first pipeline stage; no-op elsewhere):
    the word-embedding output at positions whose input id is ``pad_id`` carries no gradient.

    The hook sits after Megatron's vocab-parallel lookup (which all-reduces over TP), so it holds
    for any TP size; values are unchanged, only the backward path of those positions is cut."""
    embedding = getattr(gpt, "embedding", None)
    if embedding is None:
        return

    def hook(module, args, output):
        ids_BT = args[0]
        if output.shape[:2] != ids_BT.shape:  # sequence-parallel scatter: positions no longer align
            raise ValueError("pad_token_id gradient freeze: sequence parallelism is not supported; turn it off")
        return torch.where((ids_BT == pad_id)[..., None], output.detach(), output)

    embedding.word_embeddings.register_forward_hook(hook)
