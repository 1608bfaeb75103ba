"""Token sampling: keyed Gumbel-max, token = argmax(logits / T + G), with the Gumbel noise G a
pure function of (row key, position, token id).

Why not inverse-CDF (cumsum + searchsorted)? Its choice depends on a cumulative sum over 128k
entries: a random-init policy is near uniform, each id's slice of the CDF is ~8e-6 wide, and a
last-bit difference in the logits (another CPU, another kernel path) shifts every boundary after
it; the tiny curve recorded on an AMD CPU left an Intel CPU's run at step 2. Gumbel-max compares perturbed logits one against
another: a token flips only when the top two tie within rounding (~1e-6 per token). The key of a
row comes from the driver (seed, iteration, prompt position, sample), so a prompt's samples do not
depend on how the batch is split across data-parallel ranks either.

It stays cheap by being hierarchical (exact, by Gumbel max-stability): the vocabulary is cut in
blocks of 128 ids, a block is drawn with Gumbel noise on its log-sum-exp, then an id inside it with
fresh noise, so each step needs ~1.1k noise values per row instead of 128k. The noise is a 32-bit
integer hash in torch (bit-identical on every CPU), turned into float64 Gumbels.
"""

from __future__ import annotations

import hashlib

import torch

BLOCK = 128  # ids per block of the two-level draw (Megatron pads the vocabulary to 128 * TP)
_M32 = 0xFFFFFFFF


def sample_key(*parts: int) -> int:
    """A 32-bit key from integers, e.g. (seed, iteration, prompt position, sample index)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for int64 x in [0, 2^32), in 16-bit halves so nothing overflows int64."""
    lo, hi = x & 0xFFFF, x >> 16
    return (lo * c + (((hi * c) & 0xFFFF) << 16)) & _M32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer (Wellons' lowbias32) on int64 tensors holding 32-bit values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def gumbel_noise(keys_B: torch.Tensor, position: int, stream: int, count: int) -> torch.Tensor:
    """[B, count] float64 standard Gumbel noise, a pure function of (key, position, stream, index)."""
    salt = _hash32(torch.tensor([(position * 2 + stream) & _M32], dtype=torch.int64))
    base_B1 = _hash32(keys_B.to(torch.int64)[:, None] ^ salt)
    index_C = (torch.arange(count, dtype=torch.int64) * 0x9E3779B9) & _M32
    bits_BC = _hash32(_hash32((base_B1 + index_C) & _M32))
    u_BC = ((bits_BC >> 8).double() + 0.5) * 2.0**-24  # in (0, 1), never 0 or 1
    return -torch.log(-torch.log(u_BC))


def sample_tokens(
    logits_BV: torch.Tensor,
    *,
    temperature: float,
    top_k: int,
    top_p: float,
    keys_B: torch.Tensor,
    position: int,
) -> torch.Tensor:
    """Draw one token id per row from softmax(logits / temperature), filtered by top_k
    (0 = off) and top_p (1.0 = off), with the noise of row key ``keys_B`` at ``position``.
    Zero-probability ids are never drawn."""
    if top_k == 1:
        return logits_BV.argmax(dim=-1)
    x_BV = logits_BV.float() / temperature
    B, V = x_BV.shape
    if 0 < top_k < V:
        kth_B1 = torch.topk(x_BV, top_k, dim=-1).values[:, -1:]
        x_BV.masked_fill_(x_BV < kth_B1, float("-inf"))
    if top_p < 1.0:
        # Keep the most likely ids until their mass reaches top_p (always at least one).
        probs_BV = torch.softmax(x_BV, dim=-1)
        sorted_BV, order_BV = probs_BV.sort(dim=-1, descending=True)
        drop_BV = (sorted_BV.cumsum(dim=-1) - sorted_BV) >= top_p
        x_BV.scatter_(-1, order_BV, sorted_BV.masked_fill(drop_BV, 0.0).log())
    K = -(-V // BLOCK)
    if K * BLOCK != V:
        x_BV = torch.nn.functional.pad(x_BV, (0, K * BLOCK - V), value=float("-inf"))
    x_BKC = x_BV.view(B, K, BLOCK)
    keys_B = keys_B.to("cpu")
    # Level 1: the max of a block's perturbed logits is Gumbel(logsumexp of the block). One exp
    # pass against the row max (a block far below it underflows to -inf: mass < e^-87).
    max_B1 = x_BV.amax(dim=-1, keepdim=True)
    lse_BK = ((x_BV - max_B1).exp_().view(B, K, BLOCK).sum(dim=-1).log_() + max_B1).cpu().double()
    block_B = (lse_BK + gumbel_noise(keys_B, position, 0, K)).argmax(dim=-1)
    # Level 2: inside the chosen block, Gumbel-max with independent noise.
    inner_BC = x_BKC[torch.arange(B, device=x_BKC.device), block_B.to(x_BKC.device)].cpu().double()
    id_B = block_B * BLOCK + (inner_BC + gumbel_noise(keys_B, position, 1, BLOCK)).argmax(dim=-1)
    return id_B.to(logits_BV.device)
