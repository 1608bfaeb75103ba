"""Pair selection: explicit prompt/sample indices, ties, the original system's layout bug."""

import torch

from common.train.pairs import apply_missing_eos_penalty, select_pairs


def test_sample_b_wins_for_some_prompts_in_a_micro_batch():
    # The original mis-paired exactly this case: interleaved [p0a, p0b, p1a, p1b, ...] indexed as
    # TRL's block layout. Here row = prompt, column = sample, so b winning picks column 1 of that row.
    scores_PN = torch.tensor([[0.1, 0.9], [0.8, 0.2], [-1.0, 3.0], [5.0, 4.0]])
    pairs = select_pairs(scores_PN)
    assert pairs.chosen_P.tolist() == [1, 0, 1, 0]
    assert pairs.rejected_P.tolist() == [0, 1, 0, 1]
    # every chosen outscores its own prompt's rejected
    idx = torch.arange(4)
    assert bool((scores_PN[idx, pairs.chosen_P] >= scores_PN[idx, pairs.rejected_P]).all())


def test_flattened_interleaved_batch_round_trips_to_its_prompt():
    # responses carry their (prompt, sample) identity; pairing must return the same prompt's texts
    P, n = 5, 2
    responses = [[f"p{i}s{j}" for j in range(n)] for i in range(P)]
    flat_scores = torch.tensor([0.0, 1.0, 1.0, 0.0, 2.0, 2.0, -1.0, -0.5, 3.0, 1.0])  # row-major
    pairs = select_pairs(flat_scores.view(P, n))
    chosen = [responses[i][int(pairs.chosen_P[i])] for i in range(P)]
    rejected = [responses[i][int(pairs.rejected_P[i])] for i in range(P)]
    assert chosen == ["p0s1", "p1s0", "p2s0", "p3s1", "p4s0"]
    assert rejected == ["p0s0", "p1s1", "p2s1", "p3s0", "p4s1"]


def test_ties_go_to_the_first_sample():
    pairs = select_pairs(torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    assert pairs.chosen_P.tolist() == [0, 0]
    assert pairs.rejected_P.tolist() == [1, 1]


def test_more_than_two_samples_best_vs_worst():
    scores = torch.tensor([[0.0, 2.0, -1.0, 2.0], [1.0, 1.0, 1.0, 1.0], [3.0, -2.0, 0.0, -2.0]])
    pairs = select_pairs(scores)
    assert pairs.chosen_P.tolist() == [1, 0, 0]  # first maximum
    assert pairs.rejected_P.tolist() == [2, 3, 3]  # last minimum; all-tie -> 0 vs n-1


def test_missing_eos_penalty_only_hits_responses_without_eos():
    scores = torch.tensor([[1.0, 1.0]])
    has_eos = torch.tensor([[True, False]])
    out = apply_missing_eos_penalty(scores, has_eos, 1.0)
    assert out.tolist() == [[1.0, 0.0]]
    assert select_pairs(out).chosen_P.tolist() == [0]
    assert apply_missing_eos_penalty(scores, has_eos, None).tolist() == [[1.0, 1.0]]
