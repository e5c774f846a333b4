"""Generation speed: tokens/s of `bigmodel generate`'s sampling loop with and without the key/value cache.

    nice -n 10 python scripts/bench_generate.py                       # shakespeare_char size, block 256, 500 tokens
    python scripts/bench_generate.py --device cuda --threads 0

The model is a GPT of the `experiment=shakespeare_char` preset's size (6 layers, 6 heads, 384 wide,
block 256, 65 characters) with random weights: speed does not depend on what the weights say. Both
runs sample `--new-tokens` tokens after a one-character prompt through `bigmodel.generate.sample_text`
(generate's defaults: temperature 0.8, top-k 200), so past block_size the context is cut back and
read again in both. Cached and uncached runs alternate for `--rounds` rounds; each reports its median
tokens/s, and the ratio is the median of the per-round ratios.
"""

import argparse
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

from bigmodel.data.tokenizers import CharTokenizer
from bigmodel.generate import sample_text
from bigmodel.models.gpt import GPT

REPO = Path(__file__).resolve().parents[1]
CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # tiny shakespeare's 65


def tokens_per_second(model: GPT, tokenizer: CharTokenizer, args, use_cache: bool, device: torch.device) -> float:
    generator = torch.Generator(device=device).manual_seed(0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    text = sample_text(
        model,
        tokenizer,
        "\n",
        max_new_tokens=args.new_tokens,
        temperature=0.8,
        top_k=200,
        generator=generator,
        device=device,
        use_cache=use_cache,
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    assert len(text) == 1 + args.new_tokens
    return args.new_tokens / (time.perf_counter() - start)


def commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (generate's default: 1); 0 = torch's")
    p.add_argument("--n-layer", type=int, default=6)
    p.add_argument("--n-head", type=int, default=6)
    p.add_argument("--n-embd", type=int, default=384)
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=500)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = (
        GPT(
            vocab_size=len(CHARS),
            block_size=args.block_size,
            n_layer=args.n_layer,
            n_head=args.n_head,
            n_embd=args.n_embd,
        )
        .to(device)
        .eval()
    )
    tokenizer = CharTokenizer(CHARS)
    tokens_per_second(model, tokenizer, argparse.Namespace(new_tokens=20), True, device)  # warm-up
    cached, full, ratios = [], [], []
    for r in range(args.rounds):
        order = (True, False) if r % 2 == 0 else (False, True)  # which runs first alternates by round
        speeds = {c: tokens_per_second(model, tokenizer, args, c, device) for c in order}
        cached.append(speeds[True])
        full.append(speeds[False])
        ratios.append(speeds[True] / speeds[False])
        print(
            f"round {r + 1}: cache {speeds[True]:.1f} tok/s, no cache {speeds[False]:.1f} tok/s, {ratios[-1]:.1f}x",
            flush=True,
        )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(
        f"machine: {device.type} ({name}, {torch.get_num_threads()} threads), torch {torch.__version__}, "
        f"commit {commit()}, {time.strftime('%Y-%m-%d')}"
    )
    print(
        f"GPT L{args.n_layer} H{args.n_head} C{args.n_embd} T{args.block_size}, "
        f"{model.num_params() / 1e6:.2f} M parameters, {args.new_tokens} new tokens, {args.rounds} rounds"
    )
    print(
        f"with cache: {statistics.median(cached):.1f} tok/s | without: {statistics.median(full):.1f} tok/s | "
        f"speed-up: {statistics.median(ratios):.1f}x (median of per-round ratios)"
    )


if __name__ == "__main__":
    main()
