"""`trainer.profiler`: none, simple (wall time per phase) or torch (a trace for TensorBoard)."""

import os
import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext

import torch

from bigmodel.config import Profiler


class NoProfiler:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def phase(self, name: str):
        return nullcontext()

    def step(self) -> None:
        pass

    def summary(self, print_fn) -> None:
        pass


class SimpleProfiler(NoProfiler):
    """Total and mean wall time of each phase (data, forward, backward, optimizer)."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    @contextmanager
    def phase(self, name: str):
        sync = torch.cuda.synchronize if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        start = time.perf_counter()
        yield
        if sync:
            sync()
        self.totals[name] += time.perf_counter() - start
        self.counts[name] += 1

    def summary(self, print_fn) -> None:
        total = sum(self.totals.values()) or 1.0
        lines = [f"{'phase':<10}{'calls':>8}{'mean ms':>10}{'total s':>10}{'share':>8}"]
        for name, t in sorted(self.totals.items(), key=lambda kv: -kv[1]):
            n = self.counts[name]
            lines.append(f"{name:<10}{n:>8}{1e3 * t / n:>10.2f}{t:>10.2f}{t / total:>8.1%}")
        print_fn("profile:\n" + "\n".join(lines))


class TorchProfiler(NoProfiler):
    """torch.profiler over a few steps (wait 1, warm-up 1, record 3), written for TensorBoard."""

    def __init__(self, output_dir: str) -> None:
        self.trace_dir = os.path.join(output_dir, "profiler")
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.prof = torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(wait=1, warmup=1, active=3, repeat=1),
            on_trace_ready=torch.profiler.tensorboard_trace_handler(self.trace_dir),
            record_shapes=True,
            profile_memory=True,
        )

    def __enter__(self):
        self.prof.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.prof.__exit__(*exc)

    def phase(self, name: str):
        return torch.profiler.record_function(name)

    def step(self) -> None:
        self.prof.step()

    def summary(self, print_fn) -> None:
        print_fn(
            f"profiler trace written to {self.trace_dir}: open it with `bigmodel tensorboard --logdir "
            f"{os.path.dirname(self.trace_dir)}` (PYTORCH_PROFILER tab; pip install 'bigmodel[profile]'), "
            "or load the .pt.trace.json file into Perfetto / chrome://tracing"
        )


def make_profiler(kind: Profiler, output_dir: str):
    if kind == Profiler.simple:
        return SimpleProfiler()
    if kind == Profiler.torch:
        return TorchProfiler(output_dir)
    return NoProfiler()
