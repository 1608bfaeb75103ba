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
    B, V = logits_BV.shape
    filtered = 0 < top_k < V or top_p < 1.0
    if not filtered and V % BLOCK == 0 and B > 1 and logits_BV.stride() == (1, B):
        return _sample_vocab_major(logits_BV, temperature, keys_B.to("cpu"), position)
    x_BV = torch.div(logits_BV.float(), temperature, out=_scratch(logits_BV))
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
    kept_BV = x_BV.clone() if filtered else None  # level 2 reads the filtered values
    keys_B = keys_B.to("cpu")
    # Level 1: the max of a block's perturbed logits is Gumbel(logsumexp of the block). One exp
    # pass against the row max (a block far below it underflows to -inf: mass < e^-87), in place.
    max_B1 = x_BV.amax(dim=-1, keepdim=True)
    lse_BK = (x_BV.sub_(max_B1).exp_().view(B, K, BLOCK).sum(dim=-1).log_() + max_B1).cpu().double()
    block_B = (lse_BK + gumbel_noise(keys_B, position, 0, K)).argmax(dim=-1)
    # Level 2: inside the chosen block, Gumbel-max with independent noise. Its scaled logits are
    # taken again from the input (the same division, so the same values as level 1 saw).
    if kept_BV is not None:
        inner_BC = kept_BV.view(B, K, BLOCK)[torch.arange(B, device=logits_BV.device), block_B.to(logits_BV.device)]
        return _draw_in_block(block_B, inner_BC, keys_B, position).to(logits_BV.device)
    return _draw_in_block(block_B, _block_logits(logits_BV, block_B, temperature), keys_B, position).to(
        logits_BV.device
    )


def _sample_vocab_major(
    logits_BV: torch.Tensor, temperature: float, keys_B: torch.Tensor, position: int
) -> torch.Tensor:
    """The unfiltered draw on logits laid out vocabulary-major ([B, V] with strides (1, B): how the
    decode step's output layer computes them, common/generate/generation.py), without transposing 8 MB per
    step: the same two levels, reduced along the vocabulary dimension in place."""
    B, V = logits_BV.shape
    x_VB = torch.div(logits_BV.t().float(), temperature, out=_scratch(logits_BV.t()))
    # the column max, taken 8 rows wide (a max is exact in any order; a plain amax(dim=0) over
    # 16 columns is ~50x slower on CPU)
    max_1B = x_VB.view(V // 8, 8 * B).amax(dim=0).view(8, B).amax(dim=0, keepdim=True)
    lse_KB = x_VB.sub_(max_1B).exp_().view(V // BLOCK, BLOCK, B).sum(dim=1).log_() + max_1B
    block_B = (lse_KB.t().cpu().double() + gumbel_noise(keys_B, position, 0, V // BLOCK)).argmax(dim=-1)
    return _draw_in_block(block_B, _block_logits(logits_BV, block_B, temperature), keys_B, position).to(
        logits_BV.device
    )


def _block_logits(logits_BV: torch.Tensor, block_B: torch.Tensor, temperature: float) -> torch.Tensor:
    """[B, BLOCK] scaled logits of each row's chosen block, taken again from the input (the same
    division as level 1's, so the same values); ids past the vocabulary get -inf."""
    B, V = logits_BV.shape
    cols_BC = block_B.to(logits_BV.device)[:, None] * BLOCK + torch.arange(BLOCK, device=logits_BV.device)
    rows_B1 = torch.arange(B, device=logits_BV.device)[:, None]
    inner_BC = logits_BV[rows_B1, cols_BC.clamp(max=V - 1)].float() / temperature
    return inner_BC.masked_fill(cols_BC >= V, float("-inf"))


def _draw_in_block(block_B: torch.Tensor, inner_BC: torch.Tensor, keys_B: torch.Tensor, position: int) -> torch.Tensor:
    """Level 2: Gumbel-max inside each row's chosen block, with noise independent of level 1's."""
    return block_B * BLOCK + (inner_BC.cpu().double() + gumbel_noise(keys_B, position, 1, BLOCK)).argmax(dim=-1)


_SCRATCH: dict[tuple, torch.Tensor] = {}


def _scratch(like: torch.Tensor) -> torch.Tensor:
    """A float32 buffer shaped like ``like``, reused across calls (one decode step after another).
    A fresh [16, 128k] tensor per step costs ~2 ms of page faults on CPU, more than the division
    written into it."""
    key = (tuple(like.shape), like.device)
    if key not in _SCRATCH:
        _SCRATCH.clear()  # one shape at a time: the batch of the current generation
        _SCRATCH[key] = torch.empty(like.shape, dtype=torch.float32, device=like.device)
    return _SCRATCH[key]
