"""A callback for benchmarks of whole runs (scripts/bench_gpt.py --full): timestamps of a real
`bigmodel train` run, written as JSON when fit ends.

    PYTHONPATH=scripts:src bigmodel train experiment=shakespeare_char \
        +callbacks.step_clock._target_=step_clock.StepClock +callbacks.step_clock.out=clock.json
    python scripts/step_clock.py clock.json   # training time, ms/iter, each validation's time and metrics

The device is synchronized only every `window` steps and at each validation, so the run is not
slowed by the clock: ms per iteration is the median over windows (those with a validation, a
sample or a checkpoint are the slow outliers the median leaves out), and the mean over all of them
is the time per iteration that everything included.
"""

import json
import statistics
import sys
import time

import torch


class StepClock:
    def __init__(self, out: str, window: int = 10) -> None:
        self.out, self.window = out, window
        self.edges: list[tuple[int, float]] = []  # (global step, unix time) every `window` steps
        self.validations: list[tuple[int, float, dict]] = []  # (global step, unix time, metrics)

    def _now(self, trainer) -> float:
        if trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)
        return time.time()

    def on_fit_start(self, trainer) -> None:
        self.edges.append((trainer.global_step, self._now(trainer)))

    def on_train_batch_end(self, trainer, loss) -> None:
        if trainer.global_step % self.window == 0:
            self.edges.append((trainer.global_step, self._now(trainer)))

    def on_validation_end(self, trainer, metrics: dict[str, float]) -> None:
        self.validations.append((trainer.global_step, self._now(trainer), dict(metrics)))

    def on_fit_end(self, trainer) -> None:
        if trainer.is_global_zero:
            with open(self.out, "w") as f:
                json.dump(
                    {
                        "window": self.window,
                        "edges": self.edges,
                        "validations": self.validations,
                        "end": self._now(trainer),
                    },
                    f,
                )


def report(clock: dict, warmup: int = 0) -> str:
    """Training time (fit start to end: validations and checkpoints included, start-up not), ms/iter
    (median over windows after `warmup` steps), and each validation's time since fit start and metrics."""
    start, end = clock["edges"][0][1], clock["end"]
    edges = [(s, t) for s, t in clock["edges"] if s >= warmup]
    windows = [1e3 * (t2 - t1) / (s2 - s1) for (s1, t1), (s2, t2) in zip(edges, edges[1:]) if s2 > s1]
    ms = statistics.median(windows) if windows else float("nan")
    lines = [
        f"fit: {end - start:.2f} s for {clock['edges'][-1][0]} steps; "
        f"{ms:.2f} ms/iter (median of {len(windows)} windows)"
    ]
    for step, t, metrics in clock["validations"]:
        shown = "  ".join(f"{k}={v:.4f}" for k, v in metrics.items())
        lines.append(f"  step {step} at {t - start:.2f} s: {shown}")
    return "\n".join(lines)


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(report(json.load(f), int(sys.argv[2]) if len(sys.argv) > 2 else 0))
