"""Training speed of the text classifiers on long texts: samples/s of model=textcnn vs model=lstm.

    python scripts/bench_textmodels.py [--length 400] [--batch-size 32] [--steps 10] [--rounds 3] [--threads 1]

Both models are built from their shipped configs (configs/model/{lstm,textcnn}.yaml: the BiLSTM
128+128 with max pooling, Kim's CNN with 300-wide word vectors and 3/4/5 x 100 filters) over a
20,000-word vocabulary, and run forward / cross-entropy / backward / AdamW step (as `optimizer=adamw`) on random token
batches of --length tokens per text (IMDb-review sized at 400). Rounds alternate which model goes
first so that load from other processes hits both alike; the time per step is the median over a
round's steps after one warm-up step. Prints a Markdown row: samples/s of each and their ratio
(the ratio of the medians, and the median of the per-round ratios).
"""

import argparse
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from bigmodel.cli import config_dir
from bigmodel.optim import param_groups

VOCAB, CLASSES = 20_000, 2


def build(name: str) -> torch.nn.Module:
    cfg = OmegaConf.load(Path(config_dir()) / "model" / f"{name}.yaml")
    return instantiate(cfg, vocab_size=VOCAB, num_classes=CLASSES, pad_idx=0)


def step_times(model: torch.nn.Module, batches: list, steps: int) -> list[float]:
    """Seconds per training step, one warm-up step excluded."""
    opt = torch.optim.AdamW(param_groups(model, 0.01), lr=1e-3)  # as optimizer=adamw builds it
    model.train()
    times = []
    for i in range(steps + 1):
        (tokens, lengths), labels = batches[i % len(batches)]
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(tokens, lengths), labels).backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - start)
    return times


def commit() -> str:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
            ).stdout.strip()
            or "?"
        )
    except OSError:
        return "?"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--length", type=int, default=400, help="tokens per text")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="timed steps per model per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batches = [
        (
            (torch.randint(2, VOCAB, (args.batch_size, args.length)), torch.full((args.batch_size,), args.length)),
            torch.randint(0, CLASSES, (args.batch_size,)),
        )
        for _ in range(4)
    ]
    models = {name: build(name) for name in ("lstm", "textcnn")}
    per_step: dict[str, list[float]] = {name: [] for name in models}
    ratios = []
    for r in range(args.rounds):
        order = list(models) if r % 2 == 0 else list(reversed(models))
        med = {name: statistics.median(step_times(models[name], batches, args.steps)) for name in order}
        for name, t in med.items():
            per_step[name].append(t)
        ratios.append(med["lstm"] / med["textcnn"])
        print(f"round {r}: " + "  ".join(f"{n} {args.batch_size / t:.1f} samples/s" for n, t in med.items()))
    rate = {name: args.batch_size / statistics.median(ts) for name, ts in per_step.items()}
    print(
        f"| {time.strftime('%Y-%m-%d')} | {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} thread(s) | `python scripts/bench_textmodels.py --length {args.length} --batch-size "
        f"{args.batch_size} --steps {args.steps} --rounds {args.rounds} --threads {args.threads}` | "
        f"{rate['lstm']:.1f} | {rate['textcnn']:.1f} | **{rate['textcnn'] / rate['lstm']:.1f}x** "
        f"(per-round median {statistics.median(ratios):.1f}x) | {commit()} |"
    )


if __name__ == "__main__":
    main()
