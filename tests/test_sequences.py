"""Padding, response masks and score positions: padding never counts, EOS handling is explicit."""

import pytest
import torch

from common.train.sequences import Sequence, has_eos, pad_batch, score_positions, summed_response_logps

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


def test_length_cuts_cut_where_padding_would_dominate_and_keep_every_row():
    from common.train.sequences import MIN_BATCH_TOKENS, length_cuts

    # 4 long rows (~400 tokens) among 12 short ones (~60), sorted as the caller sorts them
    lengths = sorted([60, 410, 55, 64, 400, 58, 61, 395, 57, 62, 59, 420, 63, 56, 60, 61], reverse=True)
    cuts = length_cuts(lengths, 16)
    assert [a for a, _ in cuts] == [0] + [b for _, b in cuts[:-1]] and cuts[-1][1] == 16  # every row, in order
    padded = sum(lengths[a] * (b - a) for a, b in cuts)
    assert cuts == [(0, 4), (4, 16)] and padded < 0.5 * lengths[0] * 16
    assert all(sum(lengths[a:b]) >= MIN_BATCH_TOKENS for a, b in cuts)

    # similar lengths, or too few tokens to split: one batch
    assert length_cuts([58 - i for i in range(16)], 16) == [(0, 16)]
    assert length_cuts([301, 13, 11, 10], 16) == [(0, 4)]
    # never more than `size` rows in a batch
    assert length_cuts([58 - i for i in range(16)], 4) == [(0, 4), (4, 8), (8, 12), (12, 16)]
    with pytest.raises(ValueError, match="sorted longest first"):
        length_cuts([10, 20], 4)
