"""HF's ``padding_idx`` on load: a policy whose config sets ``pad_token_id`` gets exactly HF's gradients.

A tiny tied HF Llama with ``pad_token_id`` set (nn.Embedding(padding_idx=...)) and the same weights
in the project's model with ``stop_lookup_gradient``: the embedding gradients agree on every row,
including the pad row, which still learns through the tied output layer. Without the hook the pad
row's gradient differs (the check is not vacuous). The end-to-end check is the TRL comparison on
such a policy (tests/test_parity_trl.py).
"""

from __future__ import annotations

import torch

VOCAB, PAD = 1000, 7


def _hf_policy(tmp_path):
    import transformers

    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=True,
        pad_token_id=PAD,
    )  # fmt: skip
    torch.manual_seed(3)
    model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():  # HF zeroes the padding row at init; give it values so both sides use it
        model.model.embed_tokens.weight[PAD].normal_(0.0, 0.02)
    model.save_pretrained(tmp_path / "hf")
    return model.train(), tmp_path / "hf"


def _ids():
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(5))
    ids[:, 4] = PAD
    ids[0, 9] = PAD
    return ids


def _ours(hf_dir, freeze: bool):
    from common.model.llama import build_policy
    from common.weights.convert import arch_from_path
    from common.weights.hf_format import load_hf_into_model
    from common.weights.hf_semantics import pad_token_id, source_hf_config, stop_lookup_gradient

    arch, _ = arch_from_path(hf_dir)
    model = build_policy(arch, dtype=torch.float32, seed=0)
    load_hf_into_model(model, hf_dir, arch)
    assert pad_token_id(source_hf_config(str(hf_dir))) == PAD
    if freeze:
        stop_lookup_gradient(model, PAD)
    return model


def _embedding_grad_ours(model) -> torch.Tensor:
    from common.train.logprobs import causal_padding_mask

    ids = _ids()
    pos = torch.arange(ids.shape[1]).expand_as(ids)
    logits = model(ids, pos, causal_padding_mask(torch.ones_like(ids, dtype=torch.bool)))[..., :VOCAB]
    torch.log_softmax(logits, -1).gather(-1, torch.roll(ids, -1, 1)[..., None]).sum().backward()
    return model.embedding.word_embeddings.weight.grad[:VOCAB]


def test_pad_row_gradient_matches_hf(world1, tmp_path):
    hf, hf_dir = _hf_policy(tmp_path)
    assert hf.model.embed_tokens.padding_idx == PAD
    ids = _ids()
    logits = hf(ids).logits
    torch.log_softmax(logits, -1).gather(-1, torch.roll(ids, -1, 1)[..., None]).sum().backward()
    want = hf.model.embed_tokens.weight.grad

    got = _embedding_grad_ours(_ours(hf_dir, freeze=True))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert want[PAD].abs().max() > 1e-4  # tied: the pad row still learns through the output layer

    unfrozen = _embedding_grad_ours(_ours(hf_dir, freeze=False))
    assert (unfrozen[PAD] - want[PAD]).abs().max() > 1e-4
