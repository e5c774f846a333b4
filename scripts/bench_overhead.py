"""Trainer step time vs a plain hand-written PyTorch loop, same model and data, in one process.

    python scripts/bench_overhead.py [--device cpu|cuda] [--steps 60] [--window 10] [--rounds 5]
                                     [--batch-size 128] [--tiny] [--on-device]

Both loops draw the same batches from the same in-memory CIFAR-shaped data (augmentation on),
run forward / cross-entropy / backward / SGD step. Time is taken at window edges only, every
--window steps, after synchronizing the device there and nowhere else: a loop that makes the host
wait for the GPU every step shows it, one that runs ahead does not pay for the timer. The time per
step is the median over windows, the first window (start-up, warm-up) left out; rounds alternate
between the two loops (and which goes first) so that machine noise hits both alike. Prints a
Markdown row: the ratio of the medians, and the median of the per-round ratios.
"""

import argparse
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

from bigmodel.config import Device, TrainerConfig
from bigmodel.data.images import Augment, ImageData
from bigmodel.losses import CrossEntropy
from bigmodel.models.cnn import CNN
from bigmodel.optim import param_groups
from bigmodel.trainer import Trainer


class NullLogger:
    def __getattr__(self, name):
        return lambda *a, **k: None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class WindowClock:
    """Synchronized timestamps after every `window`-th step (a Trainer callback, or called by hand)."""

    def __init__(self, window: int, device: torch.device) -> None:
        self.window, self.device, self.times = window, device, []

    def tick(self, step: int) -> None:
        if step % self.window == 0:
            sync(self.device)
            self.times.append(time.perf_counter())

    def on_train_batch_end(self, trainer, loss) -> None:
        self.tick(trainer.global_step)


def make_data(n: int, batch_size: int, on_device: bool) -> ImageData:
    def load():
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=g)
        y = torch.randint(0, 10, (n,), generator=g)
        return {"train": (x, y), "val": (x[:256], y[:256]), "test": (x[:256], y[:256])}, [str(i) for i in range(10)]

    dm = ImageData(
        load,
        batch_size=batch_size,
        eval_batch_size=256,
        augment=Augment(),
        mean=[0.5] * 3,
        std=[0.25] * 3,
        on_device=on_device,
        seed=0,
    )
    dm.setup()
    return dm


def build(args):
    torch.manual_seed(0)
    if args.tiny:  # a linear classifier: the step is ~nothing, so what is left is the loop's own cost
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    else:
        model = CNN(num_classes=10, stem_width=16, widths=(32, 64, 128))
    opt = torch.optim.SGD(param_groups(model, 5e-4), lr=0.05, momentum=0.9, nesterov=True)
    return model, opt


def plain_loop(args, dm, device) -> list[float]:
    model, opt = build(args)
    model.to(device).train()
    clock = WindowClock(args.window, device)
    for i, (x, y) in enumerate(dm.loader("train", device=device)):
        if i == args.steps:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        clock.tick(i + 1)
    return clock.times


def trainer_loop(args, dm, device) -> list[float]:
    model, opt = build(args)
    clock = WindowClock(args.window, device)
    cfg = TrainerConfig(
        device=Device(device.type),
        max_steps=args.steps,
        limit_val_batches=1,
        progress_bar=False,
        log_every_n_steps=10**9,
    )
    trainer = Trainer(
        cfg,
        model=model,
        loss_fn=CrossEntropy(),
        optimizer=opt,
        datamodule=dm,
        logger=NullLogger(),
        callbacks={"clock": clock},
    )
    trainer.fit()
    return clock.times


def per_step(times: list[float], window: int) -> float:
    """Median time per step over the windows between the timestamps (the first window is before them)."""
    return statistics.median(b - a for a, b in zip(times, times[1:])) / window


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=60, help="steps per loop; a multiple of --window")
    p.add_argument("--window", type=int, default=10, help="steps between synchronized timestamps")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument(
        "--tiny", action="store_true", help="a linear model instead of the CNN: the loops' own cost per step"
    )
    p.add_argument(
        "--on-device", action="store_true", help="data.on_device=true: images and augmentation on the device"
    )
    args = p.parse_args()
    if args.steps < 3 * args.window:
        p.error("--steps must be at least 3 x --window (two timed windows)")
    device = torch.device(args.device)
    dm = make_data(args.batch_size * (args.steps + 2), args.batch_size, args.on_device)
    plain, ours = [], []
    for r in range(args.rounds):  # A B, B A, A B, ...: neither loop always runs first (warm caches, clocks)
        first, second = (plain_loop, trainer_loop) if r % 2 == 0 else (trainer_loop, plain_loop)
        times = {first: per_step(first(args, dm, device), args.window)}
        times[second] = per_step(second(args, dm, device), args.window)
        plain.append(times[plain_loop])
        ours.append(times[trainer_loop])
    p_ms, o_ms = 1e3 * statistics.median(plain), 1e3 * statistics.median(ours)
    paired = statistics.median(o / p for o, p in zip(ours, plain))  # per round: the same machine state
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).resolve().parent
    ).stdout.strip()
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"plain loop per-round medians (ms): {[round(1e3 * t, 2) for t in plain]}")
    print(f"Trainer    per-round medians (ms): {[round(1e3 * t, 2) for t in ours]}")
    print(
        f"| {device.type} ({name}, {torch.get_num_threads()} threads) | torch {torch.__version__} | "
        f"{'linear' if args.tiny else 'CNN'}, batch {args.batch_size}{', on device' if args.on_device else ''}, "
        f"windows of {args.window} steps | plain {p_ms:.2f} ms | Trainer {o_ms:.2f} ms | "
        f"overhead {100 * (o_ms / p_ms - 1):+.1f}% (median of per-round ratios {100 * (paired - 1):+.1f}%) | "
        f"commit {commit} |"
    )


if __name__ == "__main__":
    main()
