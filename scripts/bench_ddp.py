"""Data-parallel throughput: one process vs N processes (torchrun; NCCL on GPUs, Gloo on CPU).

    BIGMODEL_DATA_DIR=../shared/data python scripts/bench_ddp.py experiment=cifar10_jpeg_cpu --steps 40
    BIGMODEL_DATA_DIR=../shared/data python scripts/bench_ddp.py experiment=shakespeare_char_cpu --steps 60
    python scripts/bench_ddp.py model=gpt data=shakespeare_char --nprocs 4   # any preset or overrides

Runs `bigmodel train <overrides>` three times for the same number of optimizer steps: 1 process at
the preset's batch size B; N processes at B/N each (the same global batch, hence the same training);
N processes at B each (N x the global batch). Throughput is the median of the Trainer's own
`perf/samples_per_sec` (all processes together) over log windows after the first (warm-up), also as
tokens/s for language models. The three runs repeat --rounds times, interleaved, so that load from
other jobs on the machine hits all of them alike; the table has the median over rounds and the
range. Validation, checkpoints and TensorBoard are off. Prints Markdown rows.
"""

import argparse
import csv
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from bigmodel.cli import config_dir
from bigmodel.config import register_schemas

FIXED = ["trainer.progress_bar=false", "logger=csv", "callbacks=none", "test=false", "trainer.limit_val_batches=1"]


def preset(overrides: list[str]) -> tuple[int, int | None]:
    """(data.batch_size, tokens per sample or None) of the composed config."""
    register_schemas()
    with initialize_config_dir(version_base="1.3", config_dir=config_dir()):
        cfg = compose("train", overrides=overrides)
    return cfg.data.batch_size, cfg.model.get("block_size") if "block_size" in cfg.data else None


def throughput(run_dir: Path) -> float:
    """Median perf/samples_per_sec after the first log window."""
    with open(run_dir / "csv" / "metrics.csv") as f:
        values = [float(r["value"]) for r in csv.DictReader(f) if r["name"] == "perf/samples_per_sec"]
    if len(values) < 2:
        sys.exit(f"{run_dir}: fewer than 2 throughput log lines; use more --steps or a smaller --log-every")
    return statistics.median(values[1:])


def run(overrides: list[str], nprocs: int, batch_size: int, args, out: Path) -> float:
    label = f"{nprocs}x{batch_size}"
    cmd = [
        sys.executable,
        "-m",
        "bigmodel",
        "train",
        *overrides,
        *FIXED,
        f"trainer.max_steps={args.steps}",
        f"trainer.log_every_n_steps={args.log_every}",
        f"data.batch_size={batch_size}",
        f"trainer.devices={nprocs}",
        f"hydra.run.dir={out / label}",
    ]
    print("$", " ".join(cmd[1:]), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"run {label} failed:\n{done.stderr[-3000:]}")
    return throughput(out / label)


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name()}"
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or platform.machine(),
    )
    return f"{os.cpu_count()}-core {model}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("overrides", nargs="*", help="bigmodel train overrides, e.g. experiment=cifar10_jpeg_cpu")
    p.add_argument("--nprocs", type=int, default=2)
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    p.add_argument("--log-every", type=int, default=5, help="steps per throughput window")
    p.add_argument("--rounds", type=int, default=3, help="repeats of the three runs, interleaved")
    args = p.parse_args()
    batch, tokens = preset(args.overrides)
    if batch % args.nprocs:
        sys.exit(f"data.batch_size={batch} is not divisible by --nprocs={args.nprocs}")
    setups = [(1, batch), (args.nprocs, batch // args.nprocs), (args.nprocs, batch)]
    results: dict[tuple[int, int], list[float]] = {s: [] for s in setups}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for n, b in setups if r % 2 == 0 else reversed(setups):
                results[(n, b)].append(run(args.overrides, n, b, args, Path(tmp) / f"round{r}"))
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).resolve().parent
    ).stdout.strip()
    base = statistics.median(results[setups[0]])
    print(
        f"\n{' '.join(args.overrides)} | {machine()} | torch {torch.__version__} | {args.steps} steps x "
        f"{args.rounds} rounds | {datetime.date.today()} | commit {commit}"
    )
    print("| processes | batch per process | global batch | samples/s (range) | tokens/s | vs 1 process |")
    print("|---|---|---|---|---|---|")
    for (n, b), values in results.items():
        sps = statistics.median(values)
        tps = f"{sps * tokens:,.0f}" if tokens else "-"
        print(
            f"| {n} | {b} | {n * b} | {sps:,.1f} ({min(values):,.0f}-{max(values):,.0f}) | {tps} | {sps / base:.2f}x |"
        )


if __name__ == "__main__":
    main()
