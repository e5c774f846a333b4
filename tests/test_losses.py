"""The loss component against cross-entropy computed by hand (smoothing, ignored targets, shapes)."""

import math

import torch

from bigmodel.losses import CrossEntropy


def smoothed_ce_by_hand(logits: list[float], target: int, eps: float) -> float:
    """(1 - eps) * -log p[target] + eps * mean over classes of -log p[c]."""
    log_z = math.log(sum(math.exp(v) for v in logits))
    nll = [log_z - v for v in logits]
    return (1 - eps) * nll[target] + eps * sum(nll) / len(nll)


def test_label_smoothing_matches_the_hand_computed_loss():
    rows, targets = [[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]], [0, 2]
    logits = torch.tensor(rows)
    expected = sum(smoothed_ce_by_hand(r, t, 0.1) for r, t in zip(rows, targets)) / 2
    got = CrossEntropy(label_smoothing=0.1)(logits, torch.tensor(targets))
    assert math.isclose(got.item(), expected, rel_tol=1e-6)
    plain = sum(smoothed_ce_by_hand(r, t, 0.0) for r, t in zip(rows, targets)) / 2
    assert math.isclose(CrossEntropy()(logits, torch.tensor(targets)).item(), plain, rel_tol=1e-6)
    assert abs(expected - plain) > 0.05  # the two differ: smoothing is visible


def test_sequence_logits_and_ignored_positions():
    rows = [[1.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 0.0], [2.0, 1.0, 0.0]]
    logits = torch.tensor(rows).view(2, 2, 3)  # (B, T, V)
    targets = torch.tensor([[0, 7], [2, 1]])  # 7 is the ignore index here
    got = CrossEntropy(label_smoothing=0.2, ignore_index=7)(logits, targets)
    kept = [(rows[0], 0), (rows[2], 2), (rows[3], 1)]
    expected = sum(smoothed_ce_by_hand(r, t, 0.2) for r, t in kept) / 3
    assert math.isclose(got.item(), expected, rel_tol=1e-6)


def test_loss_config_carries_label_smoothing(compose_train):
    from hydra.utils import instantiate

    loss = instantiate(compose_train(["loss.label_smoothing=0.3"]).loss)
    row = [1.0, -1.0, 0.5, 0.0]
    got = loss(torch.tensor([row]), torch.tensor([3])).item()
    assert math.isclose(got, smoothed_ce_by_hand(row, 3, 0.3), rel_tol=1e-6)
