"""Learning-rate schedules at warm-up step k, the end of warm-up and the last step, in closed form;
weight-decay parameter groups."""

import math

import pytest
import torch

from bigmodel.optim import cosine, onecycle, param_groups, step


def lrs(make, total: int, base: float = 1.0) -> list[float]:
    """The learning rate after 0, 1, ..., total scheduler steps."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    sched = make(opt, total)
    out = [opt.param_groups[0]["lr"]]
    for _ in range(total):
        opt.step()
        sched.step()
        out.append(opt.param_groups[0]["lr"])
    return out


def test_cosine_warms_up_linearly_then_decays_to_min_ratio():
    got = lrs(lambda o, n: cosine(o, n, warmup_steps=4, min_lr_ratio=0.1), total=10, base=2.0)
    # warm-up: step k of 4 -> (k+1)/5 of lr
    assert got[:4] == pytest.approx([2.0 * 1 / 5, 2.0 * 2 / 5, 2.0 * 3 / 5, 2.0 * 4 / 5])
    assert got[4] == pytest.approx(2.0)  # end of warm-up: the full lr
    # halfway through the 6 decay steps: cos(pi/2) = 0 -> 0.1 + 0.9 / 2
    assert got[7] == pytest.approx(2.0 * 0.55)
    assert got[5] == pytest.approx(2.0 * (0.1 + 0.45 * (1 + math.cos(math.pi / 6))))
    assert got[10] == pytest.approx(2.0 * 0.1)  # last step: min_lr_ratio x lr


def test_cosine_without_warmup_starts_at_the_full_rate():
    got = lrs(lambda o, n: cosine(o, n), total=4)
    assert got == pytest.approx(
        [1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4)), 0.0]
    )


def test_onecycle_ramps_up_then_decays_linearly():
    got = lrs(lambda o, n: onecycle(o, n, warmup_frac=0.3, final_ratio=0.2), total=10)
    assert got[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])  # 3 warm-up steps
    assert got[3] == pytest.approx(1.0)  # end of warm-up
    assert got[5] == pytest.approx(0.2 + 0.8 * 5 / 7)  # 2 of 7 decay steps done
    assert got[10] == pytest.approx(0.2)  # last step: final_ratio x lr


def test_step_schedule_multiplies_by_gamma_every_step_size():
    assert lrs(lambda o, n: step(o, n, step_size=2, gamma=0.5), total=5) == pytest.approx(
        [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    )


def test_param_groups_decay_matrices_only():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4, 2)
    )
    model[1].weight.requires_grad_(False)  # frozen: in neither group
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [(4, 3, 3, 3), (2, 4)]
    assert [p.shape for p in no_decay["params"]] == [(4,), (4,), (2,)]  # conv bias, bn bias, linear bias


def test_schedule_defaults():
    # onecycle: 20% warm-up (2 of 10 steps), then down to 0; a warm-up of at least one step
    assert lrs(lambda o, n: onecycle(o, n), total=10) == pytest.approx([0.5, 1.0] + [k / 8 for k in range(8, -1, -1)])
    assert lrs(lambda o, n: onecycle(o, n), total=3)[:2] == pytest.approx([1.0, 1.0])  # int(0.6) = 0 -> 1 step
    # step: x0.1 every 1000 steps
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = step(opt, 5000)
    assert [sched.lr_lambdas[0](s) for s in (0, 999, 1000, 2500)] == pytest.approx([1.0, 1.0, 0.1, 0.01])
    # cosine: no warm-up, down to 0
    assert lrs(lambda o, n: cosine(o, n), total=2) == pytest.approx([1.0, 0.5, 0.0])


def test_schedules_with_one_step_after_warmup_and_past_the_end():
    assert lrs(lambda o, n: cosine(o, n), total=1) == pytest.approx([1.0, 0.0])
    assert lrs(lambda o, n: cosine(o, n, warmup_steps=2, min_lr_ratio=0.1), total=3) == pytest.approx(
        [1 / 3, 2 / 3, 1.0, 0.1]
    )
    assert lrs(lambda o, n: onecycle(o, n, warmup_frac=0.5), total=2) == pytest.approx([1.0, 1.0, 0.0])
    # stepped past total_steps (e.g. resumed with a larger max_steps): the floor, not a new cycle
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    cos, one = cosine(opt, 4, min_lr_ratio=0.2).lr_lambdas[0], onecycle(opt, 4, final_ratio=0.2).lr_lambdas[0]
    assert [cos(s) for s in (4, 6, 8)] == pytest.approx([0.2] * 3) and [one(s) for s in (4, 6)] == pytest.approx(
        [0.2] * 2
    )


@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD])
def test_optimizers_are_fused_on_cuda_only(cls):
    from functools import partial

    from bigmodel.optim import make_optimizer

    model = torch.nn.Linear(3, 2)
    on_gpu = make_optimizer(partial(cls, lr=0.1), model, 0.01, torch.device("cuda", 0))  # built only: no step
    assert on_gpu.defaults["fused"] is True
    assert [g["weight_decay"] for g in on_gpu.param_groups] == [0.01, 0.0]  # the usual groups
    on_cpu = make_optimizer(partial(cls, lr=0.1), model, 0.01, torch.device("cpu"))
    assert not on_cpu.defaults["fused"]
    chosen = make_optimizer(partial(cls, lr=0.1, foreach=True), model, 0.0, torch.device("cuda"))
    assert not chosen.defaults["fused"] and chosen.defaults["foreach"]  # the config's choice is kept
    other = make_optimizer(partial(torch.optim.RMSprop, lr=0.1), model, 0.0, torch.device("cuda"))
    assert "fused" not in other.defaults  # no fused kernel: built as configured
