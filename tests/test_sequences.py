"""Padding, response masks and score positions: padding never counts, EOS handling is explicit."""

import torch

from common.sequences import Sequence, has_eos, pad_batch, score_positions, summed_response_logps

EOS = 9


def test_response_mask_covers_exactly_the_response_tokens():
    seqs = [Sequence([1, 2, 3], [4, 5, EOS]), Sequence([1, 2], [6])]
    b = pad_batch(seqs, pad_id=EOS)  # pad == eos, as in Llama-3
    assert b.ids_BT.shape == (2, 6)
    assert b.valid_BT.tolist() == [[True] * 6, [True, True, True, False, False, False]]
    # logprob position t predicts token t+1
    assert b.response_BT1.tolist() == [[False, False, True, True, True], [False, True, False, False, False]]
    logps = torch.arange(10, dtype=torch.float32).view(2, 5)
    assert summed_response_logps(logps, b).tolist() == [2 + 3 + 4, 6.0]


def test_score_positions_eos_and_before_eos():
    seqs = [Sequence([1, 2], [4, EOS]), Sequence([1, 2, 3], [5, 6, 7]), Sequence([1], [EOS])]
    assert score_positions(seqs, {EOS}, "eos").tolist() == [3, 5, 1]
    assert score_positions(seqs, {EOS}, "before_eos").tolist() == [2, 5, 0]


def test_has_eos():
    assert has_eos([1, EOS], {EOS}) and not has_eos([1, 2], {EOS})
