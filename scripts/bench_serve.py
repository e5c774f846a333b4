"""Load test of `bigmodel serve`: requests/s and p50 / p99 latency, batching on and off.

    nice -n 10 python scripts/bench_serve.py --ckpt logs/cifar10_jpeg_cpu/runs/<run>/checkpoints/best.pt \\
        --images ~/.cache/bigmodel/cifar10-jpeg-<hash>/cifar10-jpeg/test

Two servers are started with `bigmodel serve ... host=127.0.0.1 port=0` (loopback only, always), one
with dynamic batching and one unbatched (`batching=false`), and loaded in turn by 1, 8 and 32
concurrent clients (one keep-alive connection each, one request at a time), the two modes alternating
for `--rounds` rounds at each level. A round sends at most `--requests` requests and stops after
`--seconds`, whichever comes first. A request is one input: an image (base64 in JSON) for an image
classifier, or a text for a text classifier. Latency is measured by the client, from sending to the
whole answer; the mean batch size is the server's (GET /v1/stats), and so is the CPU time per request
(user + system time of the server process over the round, /proc): on a machine shared with other
jobs requests/s and latency depend on their load, CPU time per request much less.
"""

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def start_server(source: str, batching: bool, args) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [
        sys.executable,
        "-m",
        "bigmodel",
        "serve",
        source,
        "host=127.0.0.1",
        "port=0",
        f"batching={str(batching).lower()}",
        f"max_batch_size={args.max_batch_size}",
        f"max_wait_ms={args.max_wait_ms}",
        f"num_threads={args.threads}",
        f"precision={args.precision}",
        "device=cpu",
        f"paths.log_dir={args.log_dir}",
    ]
    Path(args.log_dir).mkdir(parents=True, exist_ok=True)
    out = Path(args.log_dir) / f"server-{'batched' if batching else 'unbatched'}.out"
    with open(out, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    while proc.poll() is None:  # the server logs its address once it listens
        lines = [line for line in out.read_text().splitlines() if " on http://" in line]
        if lines:
            return proc, lines[0].split(" on ")[1].split()[0]
        time.sleep(0.2)
    raise SystemExit(f"the server did not start (exit {proc.returncode}); see {out}")


def payloads(task: str, args) -> list[dict]:
    """One request body per input: real images / texts when given, else random 32x32 PNGs."""
    if task == "text-classification":
        texts = Path(args.texts).read_text().splitlines() if args.texts else ["a gripping , funny film"]
        bodies = [{"texts": [t]} for t in texts[:1000] if t.strip()]
        if not bodies:
            raise SystemExit(f"--texts {args.texts}: the file holds no non-empty line")
        return bodies
    if args.images:
        files = sorted(p for p in Path(args.images).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if not files:
            raise SystemExit(f"--images {args.images}: no .jpg, .jpeg or .png file under this folder")
        files = random.Random(0).sample(files, min(1000, len(files)))
        return [{"images": [base64.b64encode(f.read_bytes()).decode()]} for f in files]
    from PIL import Image

    rng, out = random.Random(0), []
    for _ in range(64):
        buf = io.BytesIO()
        Image.frombytes("RGB", (32, 32), bytes(rng.randrange(256) for _ in range(32 * 32 * 3))).save(buf, "PNG")
        out.append({"images": [base64.b64encode(buf.getvalue()).decode()]})
    return out


def raw_requests(url: str, bodies: list[dict]) -> list[bytes]:
    """Each body as the bytes of a whole HTTP/1.1 request, encoded once before the clock starts."""
    host = url.split("//")[1]
    out = []
    for body in bodies:
        data = json.dumps(body).encode()
        head = (
            f"POST /v1/predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        )
        out.append(head.encode() + data)
    return out


async def post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    """One request on a keep-alive connection; the status code once the whole answer is read."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = re.search(rb"(?i)content-length: *(\d+)", head)
    await reader.readexactly(int(length.group(1)) if length else 0)
    return int(head[9:12])


def run(coro):
    """asyncio.run, on uvloop when it is installed (the deploy extra): a leaner loop for the load generator,
    which shares the CPU with the server."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load(
    url: str, requests: list[bytes], clients: int, max_requests: int, seconds: float, pid: int | None = None
) -> dict:
    """`clients` concurrent clients, one connection each, until max_requests are answered or `seconds`
    have passed. The load generator shares the CPU with the server, so it is kept lean: raw HTTP/1.1
    on asyncio streams, requests encoded beforehand (an httpx client costs more CPU than the server)."""
    latencies: list[float] = []
    sent, failed = 0, 0
    host, port = url.split("//")[1].split(":")
    end = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal sent, failed
        reader, writer = await asyncio.open_connection(host, int(port))
        while sent < max_requests and time.perf_counter() < end:
            request = requests[sent % len(requests)]
            sent += 1
            t0 = time.perf_counter()
            status = await post(reader, writer, request)
            latencies.append(time.perf_counter() - t0)
            failed += status != 200
        writer.close()

    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        before = (await http.get("/v1/stats")).json()
        cpu, start, own = cpu_seconds(pid) if pid else 0.0, time.perf_counter(), time.process_time()
        await asyncio.gather(*(client() for _ in range(clients)))
        wall, cpu = time.perf_counter() - start, (cpu_seconds(pid) - cpu if pid else 0.0)
        own = time.process_time() - own
        after = (await http.get("/v1/stats")).json()
    calls = after["batches"] - before["batches"]
    return {
        "ms": [1000 * x for x in latencies],
        "failed": failed,
        "rps": len(latencies) / wall,
        "batch": (after["requests"] - before["requests"]) / calls if calls else 0.0,
        "cpu_ms": 1000 * cpu / max(len(latencies), 1),
        "client_ms": 1000 * own / max(len(latencies), 1),  # the load generator's own CPU time
    }


def level(servers: dict[str, tuple[str, list[bytes], int]], clients: int, args) -> dict[str, dict]:
    """Both modes at one concurrency, alternating for --rounds rounds (the load from other jobs on a
    shared machine changes by the minute: each round compares the two modes under the same load).
    req/s and mean batch are the medians of the rounds; p50 / p99 are over every request."""
    runs: dict[str, list[dict]] = {mode: [] for mode in servers}
    for _ in range(args.rounds):
        for mode, (url, requests, pid) in servers.items():
            runs[mode].append(run(load(url, requests, clients, args.requests, args.seconds, pid)))
    out = {}
    for mode, rows in runs.items():
        ms = sorted(x for r in rows for x in r["ms"])
        out[mode] = {
            "rps": statistics.median(r["rps"] for r in rows),
            "p50": statistics.median(ms),
            "p99": ms[min(len(ms) - 1, int(0.99 * len(ms)))],
            "requests": len(ms),
            "failed": sum(r["failed"] for r in rows),
            "batch": statistics.median(r["batch"] for r in rows),
            "cpu_ms": statistics.median(r["cpu_ms"] for r in rows),
            "client_ms": statistics.median(r["client_ms"] for r in rows),
            "ratios": [b["rps"] / u["rps"] for b, u in zip(runs["batched"], runs["unbatched"])],
        }
        print(
            f"{mode:>9}  {clients:>3} clients  {len(ms):>5} requests  {out[mode]['rps']:7.1f} req/s  "
            f"p50 {out[mode]['p50']:6.1f} ms  p99 {out[mode]['p99']:6.1f} ms  mean batch {out[mode]['batch']:4.1f}  "
            f"server CPU {out[mode]['cpu_ms']:.2f} ms/request  load generator CPU {out[mode]['client_ms']:.2f} "
            f"ms/request  failed {out[mode]['failed']}",
            flush=True,
        )
    return out


def model_alone(bodies: list[dict], args) -> dict[str, float]:
    """The served model's own cost per input, in this process with the server's settings: its `run` (what
    the model thread does for one call: stack, normalize, forward, softmax, the answer's dicts) on 1 input
    and on --max-batch-size inputs, interleaved, medians of 40 calls each. The ratio of the two is
    the model's own gain from batching (every input of a batched call still costs its share); requests/s
    follow it, give or take how well each server keeps its model thread busy."""
    sys.path.insert(0, str(REPO / "src"))
    import torch

    from bigmodel.serve.backend import Limits, load_backend

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    threads = args.threads or None
    backend = load_backend(args.ckpt, args.model_path, torch.device("cpu"), Limits(), threads, args.precision)
    if not hasattr(backend, "run"):
        return {}
    field = backend.input_key
    values = [b[field][0] for b in bodies]
    values = [base64.b64decode(v) for v in values] if field == "images" else values
    items = [backend.prepare(v, "input") for v in values]
    batch = [items[i % len(items)] for i in range(args.max_batch_size)]
    times: dict[int, list[float]] = {1: [], len(batch): []}
    for _ in range(3):
        backend.run(batch)
    for i in range(40):
        for n in times:
            t0 = time.perf_counter()
            backend.run(items[i % len(items) : i % len(items) + 1] if n == 1 else batch)
            times[n].append(time.perf_counter() - t0)
    one, many = (statistics.median(times[n]) * 1000 for n in (1, len(batch)))
    per_input = many / len(batch)
    return {"batch1_ms": one, "batchN_ms": many, "per_input_ms": per_input, "ceiling": one / per_input}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--ckpt", help="a classifier checkpoint from bigmodel train")
    what.add_argument("--model-path", help="an exported folder (bigmodel export / quantize) to serve instead")
    p.add_argument("--images", help="a folder of JPEG/PNG images to send (default: random 32x32 PNGs)")
    p.add_argument("--texts", help="a file of texts, one a line (for a text classifier)")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--rounds", type=int, default=3, help="rounds per level, the two modes alternating")
    p.add_argument("--requests", type=int, default=1000, help="at most this many requests per round and mode")
    p.add_argument("--seconds", type=float, default=10, help="at most this long per round and mode")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=5)
    p.add_argument("--threads", type=int, default=1, help="the server's torch threads (serve's default 1; 0 = torch's)")
    p.add_argument("--precision", default="auto", help="the servers' precision: auto (as trained) | fp32 | bf16")
    p.add_argument("--log-dir", default="/tmp/bench_serve_logs")
    p.add_argument(
        "--no-model-alone",
        dest="model_alone",
        action="store_false",
        help="skip timing the model on its own (batch 1 vs --max-batch-size, in this process, after the load)",
    )
    args = p.parse_args()
    source = f"ckpt_path={args.ckpt}" if args.ckpt else f"model_path={args.model_path}"
    print(
        f"# bench_serve: {source}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"max_batch_size={args.max_batch_size} max_wait_ms={args.max_wait_ms} precision={args.precision}",
        flush=True,
    )
    procs, servers = [], {}
    try:
        for mode in ("batched", "unbatched"):
            proc, url = start_server(source, mode == "batched", args)
            procs.append(proc)
            task = httpx.get(f"{url}/v1/model", timeout=60).json()["task"]
            servers[mode] = (url, raw_requests(url, payloads(task, args)), proc.pid)
            run(load(url, servers[mode][1], 4, 40, 10))  # warm-up
        table = {clients: level(servers, clients, args) for clients in args.clients}
        alone = model_alone(payloads(task, args), args) if args.model_alone else {}
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    print(
        "\n| clients | batched req/s | p50 / p99 ms | mean batch | CPU ms/req | unbatched req/s | p50 / p99 ms "
        "| CPU ms/req | req/s ratio (rounds) | CPU ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for clients, row in table.items():
        b, u = row["batched"], row["unbatched"]
        ratios = ", ".join(f"{r:.2f}" for r in b["ratios"])
        print(
            f"| {clients} | {b['rps']:.0f} | {b['p50']:.1f} / {b['p99']:.1f} | {b['batch']:.1f} | {b['cpu_ms']:.2f} | "
            f"{u['rps']:.0f} | {u['p50']:.1f} / {u['p99']:.1f} | {u['cpu_ms']:.2f} | "
            f"{statistics.median(b['ratios']):.2f}x ({ratios}) | {u['cpu_ms'] / b['cpu_ms']:.2f}x |"
        )

    if alone:
        print(
            f"\nmodel alone ({args.threads} thread(s), precision={args.precision}): "
            f"batch 1 {alone['batch1_ms']:.2f} ms, "
            f"batch {args.max_batch_size} {alone['batchN_ms']:.2f} ms ({alone['per_input_ms']:.3f} ms an input): "
            f"the model's own gain from batching is {alone['ceiling']:.2f}x"
        )


if __name__ == "__main__":
    main()
