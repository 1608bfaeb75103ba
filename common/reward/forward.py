"""The reward model's scores of a rollout: each prompt's trunk run once, the last layer only where a
score is read.

A rollout holds n responses per prompt, and the reward model reads one score per response, at its
score position (``common.train.sequences.score_positions``). A full forward (``RewardModel.forward``)
runs every layer over every token of every sequence; two things in it do not change any score:

- **the prompt, n times**: the trunk is causal, so a prompt's hidden states, keys and values are
  the same in each of its n sequences. Here each distinct prompt (but its last token) goes through
  the layers once (the *prefix* pass, keys and values kept per layer, rotated as in the forward),
  then each sequence's *tail* (the prompt's last token + the response up to the score position)
  attends to its prompt's kept keys and values and its own;
- **the last layer at every position**: only the score position's output reaches the head. The
  last layer computes keys and values for all tail positions (the score position attends to
  them), then the query, attention, projection and MLP at the score position alone, and the
  final norm and head at that row.

Positions are the full sequence's (RoPE of position p, whatever the pass), the layers' own modules
run in Megatron's order (as ``common.generate.generation._RotatedKeyDecoder``: a residual add is
``residual + output``), so the scores equal the full forward's up to fp32 rounding (a different
summation order in the attention; tests/test_model_layer.py compares both, TP 1 and 2). On the
BENCH CONFIG (8 prompts x 2 responses) this is ~1.7x less work than the full forward.

Pipeline parallelism (PP > 1) keeps the full forward through Megatron's schedule (workers.py).
"""

from __future__ import annotations

import torch
from megatron.core.models.common.embeddings.rotary_pos_embedding import apply_rotary_pos_emb

from common.generate.generation import residual_add
from common.train.sequences import Sequence, length_cuts


def _ids(rows: list[list[int]], length: int, device: torch.device) -> torch.Tensor:
    """Right-padded [rows, length] token ids (the pad id never matters: masks keep it out)."""
    ids = torch.zeros((len(rows), length), dtype=torch.long, device=device)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
    return ids


def _prefix_keys_values(gpt, prefixes: list[tuple[int, ...]], freqs, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the rotated keys and values [Lp, U, groups, d] of the right-padded prefixes
    (causal attention keeps padding out of every real position; padded columns are masked later)."""
    Lp = max(len(p) for p in prefixes)
    x_SBH = gpt.embedding(input_ids=_ids([list(p) for p in prefixes], Lp, device), position_ids=None)
    layers, config, kept = gpt.decoder.layers, gpt.config, []
    for i, layer in enumerate(layers):
        attention = layer.self_attention
        q, k, v = attention.get_query_key_value_tensors(layer.input_layernorm(x_SBH))
        q, k = apply_rotary_pos_emb(q, freqs[:Lp], config=config), apply_rotary_pos_emb(k, freqs[:Lp], config=config)
        kept.append((k, v))
        if i < len(layers) - 1:  # the last layer's outputs at prompt positions are never read
            x_SBH = residual_add(x_SBH, attention.linear_proj(attention.core_attention(q, k, v, None)))
            x_SBH = residual_add(x_SBH, layer.mlp(layer.pre_mlp_layernorm(x_SBH)))
    return kept


def _tail_scores(
    gpt, tails: list[list[int]], start_B: torch.Tensor, kept, source_B: torch.Tensor, freqs, device
) -> torch.Tensor:
    """Scores [B] at the last token of each tail; tail b starts at position ``start_B[b]`` of its
    sequence and continues prefix row ``source_B[b]`` of ``kept`` (None: no prefix)."""
    B, Lt = len(tails), max(len(t) for t in tails)
    Lp = kept[0][0].shape[0] if kept else 0
    positions_TB = (start_B[None, :] + torch.arange(Lt, device=device)[:, None]).clamp_(max=freqs.shape[0] - 1)
    freqs_TB = freqs[:, 0, 0][positions_TB].unsqueeze(2)  # [Lt, B, 1, d]: each row's own positions
    # Megatron's convention (True = masked): prefix columns past the row's prefix, tail columns after the query
    prefix_masked_BP = torch.arange(Lp, device=device)[None, :] >= start_B[:, None]
    after_TT = torch.ones((Lt, Lt), dtype=torch.bool, device=device).triu_(1)
    mask = torch.cat([prefix_masked_BP[:, None, None, :].expand(B, 1, Lt, Lp), after_TT.expand(B, 1, Lt, Lt)], dim=-1)
    last_B = torch.tensor([len(t) - 1 for t in tails], device=device)
    rows_B = torch.arange(B, device=device)

    x_SBH = gpt.embedding(input_ids=_ids(tails, Lt, device), position_ids=None)
    layers, config = gpt.decoder.layers, gpt.config
    for i, layer in enumerate(layers):
        attention = layer.self_attention
        q, k, v = attention.get_query_key_value_tensors(layer.input_layernorm(x_SBH))
        q, k = apply_rotary_pos_emb(q, freqs_TB, config=config), apply_rotary_pos_emb(k, freqs_TB, config=config)
        if kept:
            k = torch.cat([kept[i][0].index_select(1, source_B), k])
            v = torch.cat([kept[i][1].index_select(1, source_B), v])
        if i == len(layers) - 1:  # the score positions only: one query per row
            q, mask, x_SBH = q[last_B, rows_B][None], mask[rows_B, :, last_B][:, :, None], x_SBH[last_B, rows_B][None]
        x_SBH = residual_add(x_SBH, attention.linear_proj(attention.core_attention(q, k, v, mask)))
        x_SBH = residual_add(x_SBH, layer.mlp(layer.pre_mlp_layernorm(x_SBH)))
    scores_1B1, _ = gpt.output_layer(gpt.decoder.final_layernorm(x_SBH))
    return scores_1B1[0, :, 0].float()


@torch.no_grad()
def shared_prompt_scores(model, seqs: list[Sequence], positions: list[int], max_rows: int) -> list[float]:
    """The reward model's score of each sequence at ``positions[i]`` (an index into prompt +
    response, at or after the prompt's last token), as ``RewardModel.forward`` would give it.

    Prompts are taken longest first in groups of up to ``max_rows`` sequences, cut where the
    prefix pass would pad least (``common.train.sequences.length_cuts``)."""
    gpt = model.gpt
    device = next(gpt.parameters()).device
    for s, pos in zip(seqs, positions):
        if not len(s.prompt_ids) - 1 <= pos < len(s.prompt_ids) + len(s.response_ids):
            raise ValueError(
                f"shared_prompt_scores: score position {pos} is outside the last prompt token..end of a "
                f"{len(s.prompt_ids)}-token prompt + {len(s.response_ids)}-token response"
            )
    members: dict[tuple[int, ...], list[int]] = {}  # prompt -> its sequences
    for i, s in enumerate(seqs):
        members.setdefault(tuple(s.prompt_ids), []).append(i)
    prompts = sorted(members, key=len, reverse=True)
    per_group = max(1, max_rows // max(len(m) for m in members.values()))
    freqs = gpt.rotary_pos_emb(max(positions) + 1)  # [S, 1, 1, d], as the forward computes them
    out = [0.0] * len(seqs)
    for a, b in length_cuts([len(p) - 1 for p in prompts], per_group):
        group = prompts[a:b]
        prefixes = [p[:-1] for p in group]
        kept = _prefix_keys_values(gpt, prefixes, freqs, device) if any(prefixes) else None
        rows = [(u, i) for u, p in enumerate(group) for i in members[p]]
        tails = [
            list(seqs[i].prompt_ids[-1:]) + seqs[i].response_ids[: positions[i] - len(seqs[i].prompt_ids) + 1]
            for _, i in rows
        ]
        start_B = torch.tensor([len(seqs[i].prompt_ids) - 1 for _, i in rows], device=device)
        source_B = torch.tensor([u for u, _ in rows], device=device)
        scores_B = _tail_scores(gpt, tails, start_B, kept, source_B, freqs, device).tolist()
        for (_, i), score in zip(rows, scores_B):
            out[i] = score
    return out
