"""Latency of a checkpoint in eager PyTorch vs its ONNX export under onnxruntime, at batch 1 and 64.

    python scripts/bench_export.py CKPT [CKPT ...] [--batches 1 64] [--threads 1] [--rounds 5] [--iters 50]

Each checkpoint is exported with `bigmodel.export.export_model` (format=onnx, checked against the
checkpoint) into a temporary folder. The inputs are real validation examples of the checkpoint's own
data (N drawn at random from the val split, seeded; texts padded to the longest of them).
Eager runs `model(*inputs)` under
torch.inference_mode with `--threads` intra-op threads; onnxruntime runs with the same number of
threads. A round times `--iters` calls of each, alternating which goes first (load from other
processes hits both alike), after warm-up; the figure is the median per-call time over the rounds'
medians. Prints a Markdown row per (checkpoint, batch): eager ms, ONNX ms, speed-up.
"""

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bigmodel.export import export_model
from bigmodel.exported import load_exported
from bigmodel.restore import restore_datamodule, restore_model
from bigmodel.runtime import as_args


def val_inputs(restored, n: int, seed: int = 0) -> tuple:
    """n validation examples drawn at random (seeded; the loader sorts texts by length, so its first
    batch would be the shortest texts) as the model's positional inputs, texts padded to the longest."""
    datamodule = restore_datamodule(restored, {"eval_batch_size": 1 << 20})  # the whole split in one batch
    inputs, _ = next(iter(datamodule.loader("val")))
    args = as_args(inputs)
    pick = torch.randperm(len(args[0]), generator=torch.Generator().manual_seed(seed))[:n]
    if len(args) == 2:  # tokens, lengths: cut the padding to the longest of the n texts
        lengths = args[1][pick]
        return args[0][pick, : int(lengths.max())].contiguous(), lengths
    return tuple(a[pick].contiguous() for a in args)


def per_call(fn, iters: int) -> float:
    """Median seconds per call of fn over iters calls."""
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(ckpt: str, batch: int, exported, rounds: int, iters: int) -> tuple[float, float]:
    restored = restore_model(ckpt)
    args = val_inputs(restored, batch)
    if len(args) == 2:
        print(
            f"#   batch {batch}: texts of {args[1].float().mean():.1f} tokens on average, padded to {args[0].shape[1]}"
        )
    with torch.inference_mode():
        eager = lambda: restored.model(*args)  # noqa: E731
        onnx = lambda: exported(*args)  # noqa: E731
        for fn in (eager, onnx):
            per_call(fn, 5)  # warm-up: allocations, onnxruntime's first-run planning
        e, o = [], []
        for r in range(rounds):
            order = [(eager, e), (onnx, o)] if r % 2 == 0 else [(onnx, o), (eager, e)]
            for fn, out in order:
                out.append(per_call(fn, iters))
    return statistics.median(e), statistics.median(o)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("ckpts", nargs="+")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=50)
    a = parser.parse_args()
    torch.set_num_threads(a.threads)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, threads={a.threads}")
    print("| checkpoint | model | batch | eager ms | ONNX ms | ONNX speed-up |\n|---|---|---|---|---|---|")
    for ckpt in a.ckpts:
        with tempfile.TemporaryDirectory() as tmp:
            folder = export_model(ckpt, "onnx", Path(tmp) / "onnx")
            exported = load_exported(folder, threads=a.threads)
            for batch in a.batches:
                e, o = bench(ckpt, batch, exported, a.rounds, a.iters)
                print(
                    f"| {Path(ckpt).parent.parent.parent.parent.name} | {exported.spec['model_class']} | {batch} "
                    f"| {1e3 * e:.2f} | {1e3 * o:.2f} | {e / o:.2f}x |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
