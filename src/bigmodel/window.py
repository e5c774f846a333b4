"""What the train loop keeps between two log lines, without waiting for the device.

`Window` holds running sums (loss, train counts, steps) and the first non-finite loss as device
tensors; they are read back, in one transfer, only at log steps and checks. `Throughput` times the
training steps of a log window on the host and synchronizes the device only at the window's edges
(a log line, the start and end of a validation), so the steps in between run ahead freely.
"""

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from bigmodel.config import NonFinite
from bigmodel.runtime import Runtime

clock = time.perf_counter  # module-level so that tests can drive it
MAX_SKIPS_IN_A_ROW = 25  # on_nonfinite=skip gives up after this many: the run cannot recover


class Window:
    """Sums since the last log line, on `runtime.device`."""

    KEYS = ("loss", "correct", "count", "micro")  # as checkpoints save them (progress.window)

    def __init__(self, runtime: Runtime) -> None:
        self.runtime, self.device = runtime, runtime.device
        self.bad_step = torch.full((), -1, dtype=torch.long, device=self.device)  # first non-finite loss: step
        self.bad_loss = torch.zeros((), device=self.device)  # ... and its value
        self.reset()

    def reset(self) -> None:
        self.sums = {k: torch.zeros((), dtype=torch.float64, device=self.device) for k in self.KEYS}
        self.grad_norm: torch.Tensor | None = None

    def add_counts(self, hits: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        if hits is not None:
            self.sums["correct"] += hits[0]
            self.sums["count"] += hits[1]

    def add_step(self, loss: torch.Tensor, grad_norm: torch.Tensor | None) -> None:
        self.sums["loss"] += loss
        self.sums["micro"] += 1
        if grad_norm is not None:
            self.grad_norm = grad_norm

    def record_nonfinite(self, loss: torch.Tensor, step: int) -> None:
        """Remember the first step whose loss is not finite, on the device (nothing is read)."""
        first = ~torch.isfinite(loss) & (self.bad_step < 0)
        self.bad_loss = torch.where(first, loss.float(), self.bad_loss)
        self.bad_step = torch.where(first, step, self.bad_step)

    def first_nonfinite(self, now: int) -> tuple[int, float] | None:
        """(step, loss) of the first non-finite loss recorded on any process, or None: one read
        (`now`, NaN when only another process saw one)."""
        step, value = torch.stack([self.bad_step.double(), self.bad_loss.double()]).tolist()
        if not self.runtime.any_true(step >= 0):
            return None
        return (int(step), value) if step >= 0 else (now, float("nan"))

    def read(self) -> dict[str, float]:
        """train/loss (mean per optimizer step), train/acc and train/grad_norm over every process;
        resets the sums."""
        parts = [*self.sums.values()] + ([self.grad_norm.double()] if self.grad_norm is not None else [])
        packed = torch.stack(parts)
        self.runtime.all_reduce_sum([packed])  # all processes' sums (each process counts its own steps)
        loss, correct, count, micro, *norm = packed.tolist()
        metrics = {"train/loss": loss / max(micro, 1), "train/acc": correct / max(count, 1.0)}
        if norm:
            metrics["train/grad_norm"] = norm[0] / self.runtime.world_size
        self.reset()
        return metrics

    def state_dict(self) -> dict[str, float]:
        """The sums as one process's share of their total (every process calls this, as for FSDP)."""
        parts = [*self.sums.values()] + ([self.grad_norm.double()] if self.grad_norm is not None else [])
        packed = torch.stack(parts)
        self.runtime.all_reduce_sum([packed])
        values = [v / self.runtime.world_size for v in packed.tolist()]
        state = dict(zip(self.KEYS, values[:4]))
        return state | ({"grad_norm": values[4]} if len(values) > 4 else {})

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.sums = {k: torch.tensor(float(state[k]), dtype=torch.float64, device=self.device) for k in self.KEYS}
        norm = state.get("grad_norm")
        self.grad_norm = None if norm is None else torch.tensor(float(norm), device=self.device)


class NonFiniteGuard:
    """trainer.on_nonfinite. stop: each step's loss is recorded on the device and `check` raises,
    naming the first bad step, where the loop reads anyway (a log step before its update, an epoch's
    end, validation, the end of fit). skip: `drop` reads each step's flag (one read a step) so that a
    dropped step counts neither as a step nor in the schedule; gives up after MAX_SKIPS_IN_A_ROW."""

    def __init__(self, mode: NonFinite, window: Window, print_fn: Callable[[str], None]) -> None:
        self.skip, self.window, self.runtime, self.print = mode == NonFinite.skip, window, window.runtime, print_fn
        self.skipped_in_a_row = 0

    def drop(self, loss: torch.Tensor, step: int, epoch: int, check: bool) -> bool:
        """True: drop optimizer step `step` (skip mode, its loss is not finite on some process)."""
        if not self.skip:
            self.window.record_nonfinite(loss, step)
            if check:
                self.check(step, epoch)
            return False
        if not self.runtime.any_true(not bool(torch.isfinite(loss))):
            self.skipped_in_a_row = 0
            return False
        self.skipped_in_a_row += 1
        self.print(f"skipping step {step}: non-finite loss {loss.item()}")
        if self.skipped_in_a_row >= MAX_SKIPS_IN_A_ROW:
            raise FloatingPointError(
                f"{self.skipped_in_a_row} steps in a row had a non-finite loss (last at step "
                f"{step}): the weights or the data hold NaN/inf; lower optimizer.lr or check the data"
            )
        self.runtime.back_off()  # fp16: forget this step's inf checks; halve the scale
        return True

    def check(self, step: int, epoch: int) -> None:
        """stop mode: raise if a loss so far was not finite (one read)."""
        bad = None if self.skip else self.window.first_nonfinite(step)
        if bad is not None:
            raise FloatingPointError(
                f"non-finite loss {bad[1]} at step {bad[0]} (epoch {epoch}); set "
                "trainer.on_nonfinite=skip to drop such steps, or lower optimizer.lr"
            )


class Throughput:
    """perf/* over a log window, from training time only (validation, samples and checkpoints are
    paused out): step_time and data_wait in seconds per optimizer step, samples (and, for sequence
    targets, tokens) per second over every process."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.t0: float | None = None
        self.reset()

    def reset(self) -> None:
        self.train = self.wait = 0.0
        self.samples = self.tokens = self.steps = 0

    def _sync(self) -> None:
        if self.runtime.device.type == "cuda":
            torch.cuda.synchronize(self.runtime.device)

    def resume(self) -> None:
        self._sync()
        self.t0 = clock()

    def pause(self) -> None:
        if self.t0 is not None:
            self._sync()
            self.train += clock() - self.t0
            self.t0 = None

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """Around fetching a batch: the time the loop waited for its input pipeline."""
        t = clock()
        yield
        self.wait += clock() - t

    def add_batch(self, targets: Any) -> None:
        """Shapes only: known on the host without a sync."""
        if isinstance(targets, torch.Tensor):
            self.samples += targets.shape[0]
            self.tokens += targets.numel() if targets.dim() > 1 else 0

    def read(self) -> dict[str, float]:
        running = self.t0 is not None
        self.pause()
        steps, seconds, world = max(self.steps, 1), max(self.train, 1e-9), self.runtime.world_size
        metrics = {
            "perf/step_time": self.train / steps,
            "perf/data_wait": self.wait / steps,
            "perf/samples_per_sec": self.samples * world / seconds,
        }
        if self.tokens:
            metrics["perf/tokens_per_sec"] = self.tokens * world / seconds
        self.reset()
        if running:
            self.resume()
        return metrics
