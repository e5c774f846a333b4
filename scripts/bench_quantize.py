"""int8 against fp32 per model family: runs `bigmodel quantize` on each checkpoint given and prints one
markdown table (file size, test accuracy / val loss, latency at batch 1 and 64 for fp32 eager, fp32 ONNX
and int8), the rows of docs/BENCHMARKS.md. `--profile` adds, per family, onnxruntime's per-op time of
the fp32 and int8 ONNX models at batch 64: where the time goes.

    BIGMODEL_DATA_DIR=../shared/data python scripts/bench_quantize.py \\
        lstm=logs/sst2_lstm/runs/<run>/checkpoints/best.pt cnn=logs/cifar10_jpeg_cpu/runs/<run>/checkpoints/best.pt \\
        --out bench_quantize [--repeats 7] [--profile] [--reuse]

Timings are medians of interleaved rounds (fp32 eager, fp32 ONNX, int8 take turns), one thread each:
on a shared machine the ratios hold better than the absolute numbers.
"""

import argparse
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path


def run_quantize(ckpt: str, out: Path, repeats: int, reuse: bool) -> dict:
    """`bigmodel quantize` on ckpt, keeping the fp32 export next to the int8 folder; its report."""
    fp32, int8 = out / "fp32", out / "int8"
    export = (
        []
        if reuse and (fp32 / "bigmodel.json").is_file()
        else [["export", f"ckpt_path={ckpt}", f"output_dir={fp32}", "overwrite=true"]]
    )
    for args in (
        *export,
        ["quantize", f"model_path={fp32}", f"output_dir={int8}", "overwrite=true", f"bench_repeats={repeats}"],
    ):
        done = subprocess.run([sys.executable, "-m", "bigmodel", *args], check=False, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"bigmodel {args[0]} failed for {ckpt}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return json.loads((int8 / "quantize_report.json").read_text())


def row(name: str, r: dict) -> str:
    lat = r["latency_ms"]
    b1, b64 = (lat[k] for k in sorted(lat, key=lambda k: int(k.split()[-1])))
    mb = {k: v / 1e6 for k, v in r["file_bytes"].items()}
    cells = [
        name,
        r["method"],
        f"{mb['fp32']:.2f} / {mb['int8']:.2f} ({r['size_ratio']:.2f}x)",
        f"{r['metrics']['fp32']:.4f} / {r['metrics']['int8']:.4f}",
    ]
    for b in (b1, b64):
        cells.append(" / ".join(f"{b[k]:.2f}" for k in ("fp32 eager", "fp32 onnx", "int8 onnx")))
    cells.append(f"{b64['fp32 eager'] / b64['int8 onnx']:.2f}x")
    return "| " + " | ".join(cells) + " |"


def profile(folder: Path, inputs: tuple, top: int = 8) -> list[tuple[str, float]]:
    """onnxruntime's profile of one thread over 5 runs of `inputs`: (op type, % of the node time)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = str(folder / "ort_profile")
    session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for _ in range(5):
        session.run(None, {n: x.numpy() for n, x in zip(names, inputs)})
    events = json.loads(Path(session.end_profiling()).read_text())
    per_op: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
    total = sum(per_op.values()) or 1.0
    return sorted(((op, 100 * t / total) for op, t in per_op.items()), key=lambda x: -x[1])[:top]


def profiles(name: str, out: Path) -> str:
    from bigmodel.exported import read_spec
    from bigmodel.quantize import bench_inputs, saved_data

    spec = read_spec(out / "int8")
    big, _ = bench_inputs(saved_data(spec, None), "val" if spec["task"] == "language_model" else "test")
    lines = [f"{name}, batch {len(big[0])}, share of onnxruntime node time:"]
    for variant in ("fp32", "int8"):
        lines.append(f"  {variant}: " + ", ".join(f"{op} {p:.0f}%" for op, p in profile(out / variant, big)))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpts", nargs="+", help="name=path/to/best.pt")
    parser.add_argument("--out", type=Path, default=Path("bench_quantize"))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--reuse", action="store_true", help="keep an fp32 export already in --out")
    args = parser.parse_args()
    rows, notes = [], []
    for item in args.ckpts:
        name, _, ckpt = item.partition("=")
        report = run_quantize(ckpt, args.out / name, args.repeats, args.reuse)
        rows.append(row(name, report))
        print(rows[-1], flush=True)
        if args.profile:
            notes.append(profiles(name, args.out / name))
            print(notes[-1], flush=True)
    print(
        "\n| model | int8 method | file MB fp32 / int8 | test acc (GPT: val loss) fp32 / int8 | ms batch 1: "
        "eager / onnx fp32 / int8 | ms batch 64: eager / onnx fp32 / int8 | int8 vs eager throughput, batch 64 |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if notes:
        print("\n" + "\n".join(notes))


if __name__ == "__main__":
    main()
