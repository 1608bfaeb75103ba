"""DPO loss and metrics against hand computations."""

import math

import pytest
import torch

from common.train.dpo import dpo_losses, dpo_metrics


def test_sigmoid_loss_matches_hand_computation():
    pc, pr, rc, rr = torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]), torch.tensor([-11.5])
    logits = (-10 + 12) - (-11 + 11.5)  # 1.5
    want = -math.log(1 / (1 + math.exp(-0.1 * logits)))
    assert dpo_losses(pc, pr, rc, rr, beta=0.1, loss_type="sigmoid").item() == pytest.approx(want, abs=1e-7)


def test_ipo_loss_matches_hand_computation():
    pc, pr, rc, rr = torch.tensor([-3.0]), torch.tensor([-5.0]), torch.tensor([-4.0]), torch.tensor([-4.0])
    want = (2.0 - 1 / (2 * 0.5)) ** 2
    assert dpo_losses(pc, pr, rc, rr, beta=0.5, loss_type="ipo").item() == pytest.approx(want)


def test_policy_equal_to_reference_gives_ln2():
    x = torch.tensor([-7.0, -3.0, -9.5])
    y = torch.tensor([-2.0, -8.0, -1.0])
    assert dpo_losses(x, y, x, y, beta=0.1, loss_type="sigmoid").mean().item() == pytest.approx(math.log(2), abs=1e-7)


def test_metrics_hand_computed():
    m = dpo_metrics(
        policy_chosen_B=torch.tensor([-1.0, -2.0]),
        policy_rejected_B=torch.tensor([-3.0, -1.0]),
        ref_chosen_B=torch.tensor([-2.0, -2.0]),
        ref_rejected_B=torch.tensor([-2.0, -2.0]),
        scores_chosen_B=torch.tensor([1.0, 0.5]),
        scores_rejected_B=torch.tensor([0.0, 0.5]),
        scores_PN=torch.tensor([[1.0, 0.0], [0.5, 0.5]]),
        has_eos_PN=torch.tensor([[True, False], [False, False]]),
        beta=0.1,
        loss_type="sigmoid",
    )
    assert m["rewards/chosen"] == pytest.approx(0.1 * (1.0 + 0.0) / 2)
    assert m["rewards/rejected"] == pytest.approx(0.1 * (-1.0 + 1.0) / 2)
    assert m["rewards/margins"] == pytest.approx((0.1 * 2 - 0.1 * 1) / 2)
    assert m["rewards/accuracies"] == pytest.approx(0.5)  # second pair's margin is negative
    assert m["objective/kl"] == pytest.approx((1 + 0 - 1 + 1) / 4)
    assert m["objective/entropy"] == pytest.approx((1 + 2 + 3 + 1) / 4)
    assert m["objective/scores"] == pytest.approx(0.5)
    assert m["objective/scores_margin"] == pytest.approx(0.5)
    assert m["val/contain_eos_token"] == pytest.approx(0.25)
    assert m["logps/chosen"] == pytest.approx(-1.5)
