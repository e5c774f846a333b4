"""RNG under several processes and GPUs: dropout seeds per rank, each rank's states in the
checkpoint, the own GPU's CUDA state only (resuming on fewer visible GPUs); GPUs and ranks mocked."""

import random

import pytest
import torch

from bigmodel import checkpoint, distributed
from bigmodel.train import seed_rank


def draws() -> tuple[float, torch.Tensor]:
    return random.random(), torch.rand(4)


def test_each_rank_draws_its_own_dropout_masks_and_one_process_is_untouched():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    seed_rank(7, 0, 1)
    assert torch.equal(torch.get_rng_state(), before)  # one process: the stream goes on as before
    per_rank = []
    for rank in range(3):
        seed_rank(7, rank, 3)
        per_rank.append(draws())
    seed_rank(7, 1, 3)
    assert draws() == (per_rank[1][0], pytest.approx(per_rank[1][1]))  # reproducible per rank
    assert len({r for r, _ in per_rank}) == 3 and not torch.equal(per_rank[0][1], per_rank[1][1])
    x = torch.ones(1000)
    seed_rank(7, 0, 2)
    m0 = torch.nn.functional.dropout(x, 0.5)
    seed_rank(7, 1, 2)
    assert not torch.equal(m0, torch.nn.functional.dropout(x, 0.5))  # the masks differ across ranks


def fake_ranks(monkeypatch, states: list[dict], rank: int) -> None:
    monkeypatch.setattr(
        distributed, "gather_objects", lambda own: [own if r == rank else s for r, s in enumerate(states)]
    )
    monkeypatch.setattr(distributed, "rank", lambda: rank)


def test_every_rank_saves_and_gets_back_its_own_states(monkeypatch):
    torch.manual_seed(100)
    other = checkpoint.rng_state()  # rank 0's (another process in a real run)
    torch.manual_seed(101)
    fake_ranks(monkeypatch, [other, None], rank=1)
    state = checkpoint.rng_state()
    assert len(state["ranks"]) == 2 and torch.equal(state["torch"], other["torch"])  # rank 0's also at the top
    expected = draws()
    torch.manual_seed(5)
    checkpoint.set_rng_state(state)
    assert draws() == (expected[0], pytest.approx(expected[1]))  # rank 1 resumed rank 1's stream
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    checkpoint.set_rng_state(state)
    got = torch.rand(4)
    torch.manual_seed(100)
    assert torch.equal(got, torch.rand(4))  # rank 0: rank 0's
    monkeypatch.setattr(distributed, "rank", lambda: 2)  # resumed on more processes than were saved
    torch.manual_seed(9)
    kept = torch.get_rng_state()
    checkpoint.set_rng_state(state)
    assert torch.equal(torch.get_rng_state(), kept)  # keeps its own seed + rank stream


class FakeCuda:
    """torch.cuda with `count` visible GPUs, the current one `current`; records what is read and set."""

    def __init__(self, count: int, current: int) -> None:
        self.count, self.current, self.set, self.read = count, current, [], []

    def install(self, monkeypatch) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: self.count)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(
            torch.cuda, "get_rng_state", lambda d: self.read.append(d) or torch.full((16,), d, dtype=torch.uint8)
        )
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("saved every GPU's state"))
        monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, d: self._set(s, d))
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda s: pytest.fail("set every GPU's state"))

    def _set(self, state: torch.Tensor, device: int) -> None:
        if device >= self.count:
            raise RuntimeError(f"invalid device ordinal {device}")
        self.set.append((int(state[0]), device))


def test_only_the_own_gpu_state_is_saved_and_restored(monkeypatch):
    cuda = FakeCuda(count=4, current=2)
    cuda.install(monkeypatch)
    state = checkpoint.rng_state()
    assert cuda.read == [2] and state["cuda"].shape == (16,)
    checkpoint.set_rng_state(state)
    assert cuda.set == [(2, 2)]


@pytest.mark.parametrize("visible,current,expected", [(1, 0, [(0, 0)]), (2, 1, [(1, 1)]), (8, 5, [])])
def test_a_checkpoint_with_every_gpus_state_resumes_on_fewer_gpus(monkeypatch, visible, current, expected):
    """Checkpoints written before saved one state per visible GPU (4 here): each process now takes its own."""
    old = {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "cuda": [torch.full((16,), d, dtype=torch.uint8) for d in range(4)],
    }
    cuda = FakeCuda(count=visible, current=current)
    cuda.install(monkeypatch)
    checkpoint.set_rng_state(old)  # before: set_rng_state_all on 4 states with fewer GPUs raised
    assert cuda.set == expected
