"""Test helper: a run's ``final/`` checkpoint and its Hugging Face export give the same logits."""

from __future__ import annotations

from pathlib import Path

import torch


def check_export_matches(final: Path, hf_dir: Path, prompts: list[str], start) -> None:
    """Load ``final`` into the project's model and ``hf_dir`` into transformers; on each chat prompt
    (rendered with the exported tokenizer and template) their logits agree within 1e-4, and differ
    from ``start`` (the run's starting policy, a model) by more than 1e-3: the export is the trained
    actor. Needs a 1-rank Megatron world (conftest's ``world1``)."""
    import transformers

    from common.model.llama import build_policy
    from common.prompts.tokenizer import load_tokenizer, render_prompt_ids
    from common.train.logprobs import causal_padding_mask
    from common.weights.convert import arch_from_path, load_checkpoint_into_model

    arch, reward = arch_from_path(final)  # what every *.load= key does first
    assert not reward
    ours = build_policy(arch, dtype=torch.float32, seed=0).eval()
    load_checkpoint_into_model(ours, final, arch)
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    tok = load_tokenizer(str(hf_dir))  # tokenizer and chat template were exported too
    moved = 0.0
    for prompt in prompts:
        ids = torch.tensor([render_prompt_ids(tok, prompt)])
        mask = causal_padding_mask(torch.ones_like(ids, dtype=torch.bool))
        pos = torch.arange(ids.shape[1])[None]
        with torch.no_grad():
            mine = ours(ids, pos, mask)[0, :, : arch.vocab_size]
            theirs = hf(ids).logits[0]
            moved = max(moved, (start(ids, pos, mask)[0, :, : arch.vocab_size] - mine).abs().max().item())
        torch.testing.assert_close(theirs, mine, atol=1e-4, rtol=0)
    assert moved > 1e-3  # the export is the trained actor, not the starting weights
