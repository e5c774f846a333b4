"""GPT training throughput: our Trainer vs a plain hand-written PyTorch loop, same model and data.

    python scripts/bench_gpt.py --device cuda --dtype bf16 --compile --peak-tflops 989   # H100, reference config
    python scripts/bench_gpt.py --device cpu --n-layer 4 --n-head 4 --n-embd 128 --block-size 128 --batch-size 32
    python scripts/bench_gpt.py ... --full --data ../shared/data   # also: the whole preset run, time and val loss
    python scripts/bench_gpt.py --device cuda --dtype bf16 --compile --full-only --data ../shared/data

Defaults are nanoGPT's shakespeare_char reference (6 layers, 6 heads, 384 wide, block 256, batch 64,
dropout 0.2, AdamW lr 1e-3 with warm-up and cosine decay, grad clip 1.0). Both loops draw random
contiguous blocks from the same token memmap (the tiny shakespeare cache when --data has it, else a
random-token corpus: speed does not depend on the text). Time per iteration is the median over
windows of --window steps, synchronized at window edges only, after --warmup steps (compilation).
MFU uses 6N + 12*L*H*Q*T FLOPs per token (N non-embedding params, Q head size, T block size).
--full runs `bigmodel train experiment=shakespeare_char` itself (validation, samples, checkpoints:
what a user runs) with scripts/step_clock.py as one more callback, and reports its ms/iter the same
way (median over windows), the average with everything included, and when val loss reached --target-loss.
"""

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bigmodel.config import Device, Precision, TrainerConfig
from bigmodel.data.lm import LMData
from bigmodel.losses import CrossEntropy
from bigmodel.models.gpt import GPT
from bigmodel.optim import cosine, param_groups
from bigmodel.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}  # dense bf16/fp16 (SXM), for MFU when not given


class NullLogger:
    def __getattr__(self, name):
        return lambda *a, **k: None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_data(args, cache_dir: str) -> LMData:
    text = Path(args.data).expanduser() / "tinyshakespeare" / "input.txt" if args.data else None
    if text is None or not text.is_file():  # a random corpus of 65 symbols, 1 M characters
        rng = np.random.default_rng(0)
        text = Path(cache_dir) / "random.txt"
        text.write_text(
            "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'\n-&$3"), 1_000_000))
        )
    dm = LMData(str(text), cache_dir=cache_dir, block_size=args.block_size, batch_size=args.batch_size, seed=0)
    dm.setup()
    return dm


def build(args, vocab_size: int, device: torch.device):
    torch.manual_seed(0)
    model = GPT(
        vocab_size,
        block_size=args.block_size,
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_embd=args.n_embd,
        dropout=args.dropout,
        bias=False,
    ).to(device)
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3, betas=(0.9, 0.99), fused=device.type == "cuda")
    return model, opt, cosine(opt, 5000, warmup_steps=100, min_lr_ratio=0.1)


def autocast(args, device):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.dtype)
    return partial(torch.autocast, device.type, dtype=dtype) if dtype else contextlib.nullcontext


def plain_loop(args, dm: LMData, device: torch.device) -> list[float]:
    """What one writes by hand: random offsets, stack, pin, copy; forward, loss, backward, clip, step."""
    model, opt, sched = build(args, dm.tokenizer.vocab_size, device)
    forward = torch.compile(model) if args.compile else model
    tokens, t, ctx = dm.splits["train"], args.block_size, autocast(args, device)
    rng = np.random.default_rng(0)
    times = []
    for step in range(1, args.steps + 1):
        starts = rng.integers(0, len(tokens) - t - 1, args.batch_size)
        chunk = torch.from_numpy(tokens[starts[:, None] + np.arange(t + 1)].astype(np.int64))
        if device.type == "cuda":
            chunk = chunk.pin_memory()
        chunk = chunk.to(device, non_blocking=True)
        x, y = chunk[:, :-1], chunk[:, 1:]
        with ctx():
            logits = forward(x)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        if step % 10 == 0:
            loss.item()  # what a loop that prints its loss pays
        if step >= args.warmup and (step - args.warmup) % args.window == 0:
            sync(device)
            times.append(time.perf_counter())
    return times


class WindowTimer:
    def __init__(self, args, device):
        self.args, self.device, self.times = args, device, []

    def on_train_batch_end(self, trainer, loss) -> None:
        step = trainer.global_step
        if step >= self.args.warmup and (step - self.args.warmup) % self.args.window == 0:
            sync(self.device)
            self.times.append(time.perf_counter())


def trainer_loop(args, dm: LMData, device: torch.device) -> list[float]:
    model, opt, _ = build(args, dm.tokenizer.vocab_size, device)
    precision = {"bf16": Precision.bf16, "fp16": Precision.fp16}.get(args.dtype, Precision.fp32)
    cfg = TrainerConfig(
        device=Device(device.type),
        precision=precision,
        compile=args.compile,
        max_steps=args.steps,
        gradient_clip_val=1.0,
        limit_val_batches=1,
        log_every_n_steps=10,
        progress_bar=False,
    )
    timer = WindowTimer(args, device)
    trainer = Trainer(
        cfg,
        model=model,
        loss_fn=CrossEntropy(),
        optimizer=opt,
        datamodule=dm,
        logger=NullLogger(),
        scheduler=partial(cosine, warmup_steps=100, min_lr_ratio=0.1),
        callbacks={"timer": timer},
    )
    trainer.fit()
    return timer.times


def ms_per_iter(times: list[float], window: int) -> float:
    return 1e3 * statistics.median(b - a for a, b in zip(times, times[1:])) / window


def full_run(args) -> str:
    """`bigmodel train experiment=<preset>` in a subprocess, as a user runs it (validation, text
    samples, checkpoints), timed by scripts/step_clock.py: ms/iter, wall time, time to --target-loss."""
    with tempfile.TemporaryDirectory() as tmp:
        clock = Path(tmp) / "clock.json"
        cmd = [
            sys.executable,
            "-m",
            "bigmodel",
            "train",
            f"experiment={args.experiment}",
            "trainer.progress_bar=false",
            f"trainer.device={args.device.split(':')[0]}",
            f"trainer.compile={str(args.compile).lower()}",
            f"trainer.precision={args.dtype if args.dtype != 'fp32' else 32}",
            "+callbacks.step_clock._target_=step_clock.StepClock",
            f"+callbacks.step_clock.out={clock}",
            f"+callbacks.step_clock.window={args.window}",
            *args.overrides,
        ]
        path = [str(REPO / "scripts"), str(REPO / "src"), os.environ.get("PYTHONPATH", "")]
        env = {
            **os.environ,
            "BIGMODEL_DATA_DIR": str(Path(args.data).expanduser().resolve()),
            "PYTHONPATH": os.pathsep.join(p for p in path if p),
        }
        print("running:", " ".join(cmd[2:]), flush=True)
        launched = time.time()
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
        if out.returncode:
            sys.exit(out.stderr[-3000:])
        return summarize(json.loads(clock.read_text()), launched, args)


def summarize(clock: dict, launched: float, args) -> str:
    edges = [(s, t) for s, t in clock["edges"] if s >= args.warmup]  # compilation and warm-up left out
    windows = [1e3 * (t2 - t1) / (s2 - s1) for (s1, t1), (s2, t2) in zip(edges, edges[1:]) if s2 > s1]
    (s0, t0), (s1, _) = edges[0], edges[-1]
    mean = 1e3 * (clock["end"] - t0) / max(s1 - s0, 1)  # validations, samples and checkpoints included
    vals = [(s, t, m["val/loss"]) for s, t, m in clock["validations"]]
    best = min(vals, key=lambda v: v[2]) if vals else (0, 0.0, float("nan"))
    hit = next(((s, t) for s, t, loss in vals if loss <= args.target_loss), None)
    reached = (
        f"val loss <= {args.target_loss:g} at step {hit[0]}, {hit[1] - launched:.1f} s after launch"
        if hit
        else f"val loss never <= {args.target_loss:g}"
    )
    return (
        f"full run ({args.experiment}): {statistics.median(windows):.2f} ms/iter (median of {len(windows)} "
        f"windows of {args.window} steps after step {args.warmup}); {mean:.2f} ms/iter on average with "
        f"validation, samples and checkpoints; {reached}; best val loss {best[2]:.4f} at step {best[0]}; "
        f"{clock['end'] - launched:.1f} s from launch to the end of fit (start-up and compilation included)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="autocast dtype")
    p.add_argument("--compile", action="store_true", help="torch.compile the model in both loops")
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the device's peak for --dtype, for MFU (H100 SXM bf16 dense: 989; A100 bf16: 312)",
    )
    p.add_argument("--n-layer", type=int, default=6)
    p.add_argument("--n-head", type=int, default=6)
    p.add_argument("--n-embd", type=int, default=384)
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--steps", type=int, default=200, help="steps per loop, warm-up included")
    p.add_argument("--warmup", type=int, default=20, help="untimed first steps (compilation, allocator)")
    p.add_argument("--window", type=int, default=10, help="steps between synchronized timestamps")
    p.add_argument("--data", default=None, help="a data dir with tinyshakespeare/input.txt (else random tokens)")
    p.add_argument(
        "--full",
        action="store_true",
        help="then run the whole --experiment preset through `bigmodel train` and report it",
    )
    p.add_argument("--full-only", action="store_true", help="--full without the two loops before it")
    p.add_argument("--target-loss", type=float, default=1.48, help="--full: report when val loss first reaches it")
    p.add_argument("--experiment", default="shakespeare_char")
    p.add_argument("overrides", nargs="*", help="extra key=value overrides for --full")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        if args.peak_tflops is None and args.dtype in ("bf16", "fp16"):
            args.peak_tflops = next(
                (v for k, v in PEAK_TFLOPS.items() if k in torch.cuda.get_device_name(device)), None
            )
    if (args.full or args.full_only) and not args.data:
        sys.exit("--full needs --data (the folder that has tinyshakespeare/input.txt)")
    if not args.full_only:
        loops(args, device)
    if args.full or args.full_only:
        print(full_run(args))


def loops(args, device: torch.device) -> None:
    """The plain loop and the Trainer on the same model and data: one Markdown row."""
    with tempfile.TemporaryDirectory() as cache:
        dm = make_data(args, cache)
        plain = ms_per_iter(plain_loop(args, dm, device), args.window)
        ours = ms_per_iter(trainer_loop(args, dm, device), args.window)
        fpt = GPT(
            dm.tokenizer.vocab_size,
            block_size=args.block_size,
            n_layer=args.n_layer,
            n_head=args.n_head,
            n_embd=args.n_embd,
            bias=False,
        ).flops_per_token()
    tokens = args.batch_size * args.block_size
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    threads = "" if device.type == "cuda" else f", {torch.get_num_threads()} threads"
    cfg = f"L{args.n_layer} H{args.n_head} C{args.n_embd} T{args.block_size} B{args.batch_size}"
    row = [
        f"{device.type} ({name}{threads})",
        f"torch {torch.__version__}",
        cfg,
        f"{args.dtype}{' + compile' if args.compile else ''}",
    ]
    for label, ms in (("plain", plain), ("Trainer", ours)):
        flops = fpt * tokens / (ms / 1e3)  # model FLOP/s achieved
        mfu = (
            ", MFU n/a (--peak-tflops)"
            if args.peak_tflops is None
            else f", MFU {100 * flops / (args.peak_tflops * 1e12):.1f}% of {args.peak_tflops:g}"
        )
        row.append(f"{label} {ms:.2f} ms/iter = {tokens / ms * 1e3 / 1e6:.3f} M tok/s, {flops / 1e12:.3f} TFLOP/s{mfu}")
    row.append(f"Trainer/plain time {ours / plain:.3f}")
    print("| " + " | ".join(row) + " |", flush=True)
    print(f"5000 iterations at the Trainer's rate: {5000 * ours / 1e3:.0f} s (no evaluation, no compilation)")


if __name__ == "__main__":
    main()
