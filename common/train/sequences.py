"""Prompt + response sequences as padded tensors, and the response mask that keeps padding out.

A sequence is ``prompt_ids + response_ids``. Batches are right-padded to the longest sequence of
the micro-batch (never to ``seq_length``), so padding costs as little compute as a dense batch can.
Llama-3's pad token is its EOS, so padding is never recognised by token id: every tensor here
comes with an explicit validity or response mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Sequence:
    prompt_ids: list[int]
    response_ids: list[int]


@dataclass
class PaddedBatch:
    ids_BT: torch.Tensor  # right-padded token ids
    valid_BT: torch.Tensor  # True on real tokens
    response_BT1: torch.Tensor  # True where target token t+1 is a response token (aligns with token_logprobs)
    prompt_len_B: torch.Tensor
    total_len_B: torch.Tensor
    aux: dict = field(default_factory=dict)  # per-row values a loss needs (e.g. reference log-probs)

    def to(self, device: torch.device) -> PaddedBatch:
        tensors = (self.ids_BT, self.valid_BT, self.response_BT1, self.prompt_len_B, self.total_len_B)
        return PaddedBatch(*(x.to(device) for x in tensors), aux={k: v.to(device) for k, v in self.aux.items()})


def pad_batch(seqs: list[Sequence], pad_id: int = 0) -> PaddedBatch:
    """Right-pad to the longest sequence; the pad id never matters (masks say what is real)."""
    total_len_B = torch.tensor([len(s.prompt_ids) + len(s.response_ids) for s in seqs])
    prompt_len_B = torch.tensor([len(s.prompt_ids) for s in seqs])
    T = int(total_len_B.max())
    ids_BT = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    for b, s in enumerate(seqs):
        ids_BT[b, : total_len_B[b]] = torch.tensor(s.prompt_ids + s.response_ids)
    pos_T = torch.arange(T)
    valid_BT = pos_T[None, :] < total_len_B[:, None]
    # target of logprob position t is token t+1; it is a response token when t+1 >= prompt_len
    target_T1 = pos_T[1:]
    response_BT1 = (target_T1[None, :] >= prompt_len_B[:, None]) & (target_T1[None, :] < total_len_B[:, None])
    return PaddedBatch(ids_BT, valid_BT, response_BT1, prompt_len_B, total_len_B)


def summed_response_logps(logps_BT1: torch.Tensor, batch: PaddedBatch) -> torch.Tensor:
    """Sum of the log-probabilities of response tokens only -> ``[B]``."""
    return (logps_BT1 * batch.response_BT1.to(logps_BT1.dtype)).sum(dim=1)


def score_positions(seqs: list[Sequence], eos_ids: set[int], score_position: str) -> torch.Tensor:
    """Index (in the full sequence) where a reward model's score is read, per sequence.

    ``eos``: at the response's first EOS token, or its last token when it has none (the original
    system's convention). ``before_eos``: one token earlier when the response ends in EOS (TRL scores
    the re-tokenised text, whose last token is the one before EOS).
    """
    pos = []
    for s in seqs:
        p, r = len(s.prompt_ids), s.response_ids
        first_eos = next((i for i, t in enumerate(r) if t in eos_ids), None)
        if first_eos is None:
            pos.append(p + len(r) - 1)
        elif score_position == "eos":
            pos.append(p + first_eos)
        else:
            pos.append(p + first_eos - 1)
    return torch.tensor(pos)


def has_eos(response_ids: list[int], eos_ids: set[int]) -> bool:
    return any(t in eos_ids for t in response_ids)


def split(items: list, parts: int) -> list[list]:
    """Contiguous, equal split (callers validated divisibility)."""
    if len(items) % parts:
        raise ValueError(f"cannot split {len(items)} items into {parts} equal parts")
    k = len(items) // parts
    return [items[i * k : (i + 1) * k] for i in range(parts)]


def chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# Loss functions of the forward-only roles for ``common.train.schedule.run_microbatches`` (the loss is a
# zero placeholder; the values come back in the dict).


def collect_response_logps(batch: PaddedBatch, logps_BT1: torch.Tensor):
    """Reference: summed response log-probs per sequence."""
    return logps_BT1.new_zeros(()), {"logps": summed_response_logps(logps_BT1, batch)}


def collect_scores(batch: PaddedBatch, scores_BT: torch.Tensor):
    """Reward model: the score at each sequence's position ``batch.aux["pos"]``."""
    picked_B = scores_BT.gather(1, batch.aux["pos"][:, None]).squeeze(1).float()
    return scores_BT.new_zeros(()), {"scores": picked_B}


def micro_batches(
    seqs: list[Sequence], size: int, device: torch.device, aux: dict[str, list] | None = None
) -> list[PaddedBatch]:
    """Consecutive ``size``-sequence padded batches on ``device``; ``aux[key]`` holds one value per
    sequence (e.g. reference log-probs) and is cut like ``seqs``."""
    out = []
    for start in range(0, len(seqs), size):
        batch = pad_batch(seqs[start : start + size])
        for key, values in (aux or {}).items():
            batch.aux[key] = torch.tensor(values[start : start + size])
        out.append(batch.to(device))
    return out


MIN_BATCH_TOKENS = 256  # a forward batch is split only into parts this large (matmuls stay efficient)
BATCH_COST_TOKENS = 256  # the fixed cost of one more forward call, in tokens of compute (CPU, measured roughly)


def length_cuts(lengths: list[int], size: int) -> list[tuple[int, int]]:
    """Where to cut rows of ``lengths`` (sorted longest first) into forward batches of at most
    ``size`` rows, each padded to its first row's length: ``[(start, end), ...]`` covering every row.

    The cut minimises padded tokens plus ``BATCH_COST_TOKENS`` per batch, with every batch holding
    ``MIN_BATCH_TOKENS`` real tokens or more (or being the only one). So a batch mixing a 359-token
    prompt with 40-token ones no longer runs the short ones at the long one's length, and rows of
    similar lengths stay in one batch (the reward model's prefix pass, common/reward/forward.py).
    """
    if any(a < b for a, b in zip(lengths, lengths[1:])):
        raise ValueError("length_cuts: lengths must be sorted longest first")
    n = len(lengths)
    prefix = [0]
    for length in lengths:
        prefix.append(prefix[-1] + length)
    # best[j]: (cost, cut) of the rows j.. ; rows j..k-1 form a batch padded to lengths[j]
    best: list[tuple[float, int]] = [(0.0, n)] * (n + 1)
    for j in range(n - 1, -1, -1):
        options = []
        for k in range(j + 1, min(j + size, n) + 1):
            whole = j == 0 and k == n
            if not whole and (
                prefix[k] - prefix[j] < MIN_BATCH_TOKENS or (k < n and prefix[n] - prefix[k] < MIN_BATCH_TOKENS)
            ):
                continue
            options.append((lengths[j] * (k - j) + BATCH_COST_TOKENS + best[k][0], k))
        best[j] = min(options) if options else (float("inf"), min(j + size, n))
    cuts, j = [], 0
    while j < n:
        cuts.append((j, best[j][1]))
        j = best[j][1]
    return cuts
