"""CPU latency of a CNN checkpoint before and after pruning: does pruning make it faster?

    python scripts/bench_prune.py logs/<run>/checkpoints/best.pt --amount 0.5 --batch 1 64

Four versions of the same model, timed the same way (eager PyTorch, inference mode, rounds
interleaved so that other load on the machine hits them alike; the median wall and CPU time per
batch are shown, and the speed-up in CPU time):
  dense         the checkpoint as trained
  unstructured  global magnitude pruning (bigmodel prune amount=A): zeros inside dense tensors
  channels      channel pruning, zeroed in place (structured=true shrink=false): same shapes
  shrunk        the same channels removed (structured=true, the default): a smaller CNN
The accuracy side is measured with `bigmodel prune` + `bigmodel train init_from=...` + `bigmodel eval`
(docs/BENCHMARKS.md lists the commands).
"""

import argparse
import statistics
import time

import torch
from omegaconf import OmegaConf

from bigmodel.prune import prune_global
from bigmodel.prune_channels import prune_channels
from bigmodel.restore import restore_model


def versions(ckpt: str, amount: float) -> dict[str, torch.nn.Module]:
    """name -> model in eval mode, each rebuilt from the checkpoint and pruned in memory."""
    out = {"dense": restore_model(ckpt).model}
    out["unstructured"] = restore_model(ckpt).model
    prune_global(out["unstructured"], amount)
    for name, shrink in (("channels", False), ("shrunk", True)):
        restored = restore_model(ckpt)
        config = OmegaConf.to_container(restored.config.model, resolve=True)
        out[name] = prune_channels(restored.model, amount, config, restored.model_args, shrink=shrink)[0].eval()
    return out


@torch.inference_mode()
def latency_ms(
    models: dict[str, torch.nn.Module], batch: int, size: int, rounds: int, reps: int
) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) milliseconds per batch of each model; the rounds alternate between the
    models. CPU time (this process, all threads) is the steadier figure when other jobs share the cores."""
    x = torch.randn(batch, 3, size, size)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in models}
    for model in models.values():  # warm-up
        model(x)
    for _ in range(rounds):
        for name, model in models.items():
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(reps):
                model(x)
            times[name].append(((time.perf_counter() - wall) / reps * 1e3, (time.process_time() - cpu) / reps * 1e3))
    return {name: (statistics.median(w for w, _ in t), statistics.median(c for _, c in t)) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("ckpt", help="a CNN checkpoint (bigmodel train model=cnn ...)")
    parser.add_argument("--amount", type=float, default=0.5, help="share pruned (default 0.5)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = versions(args.ckpt, args.amount)
    print(f"amount={args.amount}  threads={args.threads}  torch {torch.__version__}")
    params = {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()}
    nonzero = {n: sum(int((p != 0).sum()) for p in m.parameters()) for n, m in models.items()}
    results = {b: latency_ms(models, b, args.size, args.rounds, max(1, 8 // b)) for b in args.batch}
    print(
        f"{'version':<13} {'params':>9} {'nonzero':>9} "
        + " ".join(f"{f'wall ms @{b}':>12} {f'CPU ms @{b}':>11} {'speed-up':>8}" for b in args.batch)
    )
    for name in models:
        cells = " ".join(
            f"{results[b][name][0]:>12.2f} {results[b][name][1]:>11.2f} "
            f"{results[b]['dense'][1] / results[b][name][1]:>7.2f}x"
            for b in args.batch
        )
        print(f"{name:<13} {params[name]:>9,} {nonzero[name]:>9,} {cells}")
    print("speed-up: dense CPU time / this version's CPU time")


if __name__ == "__main__":
    main()
