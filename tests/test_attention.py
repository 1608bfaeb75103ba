"""Fused SDPA core attention (common/model/attention.py) equals Megatron's dense-mask DotProductAttention.

Run: .venv/bin/python -m pytest tests/test_attention.py -q
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def modules(world1):
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType

    from common.model.attention import SDPAttention
    from common.model.llama import LlamaArch, _transformer_config

    arch = LlamaArch(num_layers=1, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, num_query_groups=2,
                     vocab_size=256, max_position_embeddings=64)  # fmt: skip
    config = _transformer_config(arch, torch.float32)
    kw = dict(config=config, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self")
    return DotProductAttention(**kw).eval(), SDPAttention(**kw).eval()


def _qkv(Sq, Sk, B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(Sq, B, 4, 16, generator=g)
    k, v = torch.randn(Sk, B, 2, 16, generator=g), torch.randn(Sk, B, 2, 16, generator=g)
    return q, k, v


def _causal_padding(valid_BT):
    T = valid_BT.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool).triu_(1)
    return causal[None, None] | ~valid_BT[:, None, None, :]


def test_causal_without_mask_equals_dense_right_padded(modules):
    dense, sdpa = modules
    q, k, v = _qkv(11, 11)
    valid_BT = torch.arange(11)[None, :] < torch.tensor([11, 7, 4])[:, None]
    want = dense(q, k, v, _causal_padding(valid_BT))
    got = sdpa(q, k, v, None)  # right padding: causal alone
    for b, n in enumerate(valid_BT.sum(1).tolist()):  # real positions only; padded ones are never read
        torch.testing.assert_close(got[:n, b], want[:n, b], atol=1e-6, rtol=1e-5)


def test_explicit_mask_left_padded_prefill(modules):
    dense, sdpa = modules
    q, k, v = _qkv(9, 9, seed=1)
    valid_BT = torch.arange(9)[None, :] >= torch.tensor([0, 3, 5])[:, None]  # left padding
    mask = _causal_padding(valid_BT)
    want, got = dense(q, k, v, mask), sdpa(q, k, v, mask)
    torch.testing.assert_close(got[:, 0], want[:, 0], atol=1e-6, rtol=1e-5)
    for b in (1, 2):
        real = valid_BT[b]
        torch.testing.assert_close(got[real, b], want[real, b], atol=1e-6, rtol=1e-5)


def test_decode_step_with_padded_keys(modules):
    dense, sdpa = modules
    q, k, v = _qkv(1, 13, seed=2)
    mask = (torch.arange(13)[None, :] < torch.tensor([0, 2, 6])[:, None])[:, None, None, :]
    torch.testing.assert_close(sdpa(q, k, v, mask), dense(q, k, v, mask), atol=1e-6, rtol=1e-5)


def test_unmasked_queries_after_a_cache_are_bottom_right_causal(modules):
    _, sdpa = modules
    q, k, v = _qkv(4, 10, seed=3)
    causal = torch.ones(4, 10, dtype=torch.bool).tril_(6)
    want = sdpa(q, k, v, ~causal[None, None])
    torch.testing.assert_close(sdpa(q, k, v, None), want, atol=0, rtol=0)
