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


def test_forward_batches_cut_where_padding_would_dominate_and_keep_every_row():
    from common.sequences import MIN_BATCH_TOKENS, Sequence, forward_batches, in_input_order, pad_batch

    # 4 long rows (~400 tokens) among 12 short ones (~60), interleaved as a rollout has them
    lengths = [60, 410, 55, 64, 400, 58, 61, 395, 57, 62, 59, 420, 63, 56, 60, 61]
    seqs = [Sequence(list(range(n - 8)), [7] * 8) for n in lengths]
    batches, order = forward_batches(seqs, 16, torch.device("cpu"), {"tag": list(range(16))})
    assert sorted(order) == list(range(16))
    rows = [r for b in batches for r in b.aux["tag"].tolist()]
    assert rows == order  # aux values travel with their sequences
    assert in_input_order(rows, order) == list(range(16))
    for b, start in zip(batches, [0, *torch.cumsum(torch.tensor([x.ids_BT.shape[0] for x in batches]), 0).tolist()]):
        for row, i in enumerate(order[start : start + b.ids_BT.shape[0]]):
            n = lengths[i]
            assert b.ids_BT[row, :n].tolist() == seqs[i].prompt_ids + seqs[i].response_ids
    padded = sum(b.ids_BT.numel() for b in batches)
    assert len(batches) == 2 and padded < 0.5 * pad_batch(seqs).ids_BT.numel()
    assert all(b.valid_BT.sum() >= MIN_BATCH_TOKENS for b in batches)

    # similar lengths, or too few tokens to split: one batch, as before
    even = [Sequence(list(range(50 + i)), [7] * 8) for i in range(16)]
    assert len(forward_batches(even, 16, torch.device("cpu"))[0]) == 1
    few = [Sequence(list(range(n)), [7]) for n in (300, 10, 12, 9)]
    assert len(forward_batches(few, 16, torch.device("cpu"))[0]) == 1
    # never more than `size` rows in a batch
    assert [b.ids_BT.shape[0] for b in forward_batches(even, 4, torch.device("cpu"))[0]] == [4, 4, 4, 4]
