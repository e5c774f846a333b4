"""`bigmodel runs [name]`: a table (or CSV) of the runs under the log dir, read from what each run left.

A run is a folder <log_dir>/<name>/runs/<stamp>/ or a sweep job <log_dir>/<name>/multirun/<stamp>/<n>/.
Nothing here writes into a run folder. The status of a run, first rule that applies:

    running      another process holds the run's .lock (bigmodel.rundir.lock)
    failed       error.txt (a failed sweep job), or an `error:` line or a traceback in train.log
    interrupted  train.log says a signal stopped it (`received SIGINT` / `SIGTERM`)
    finished     test metrics were logged (metrics.csv, or train.log with logger=none), or (test=false)
                 checkpoints/last.pt exists
    failed       anything else: the process died before it finished (killed, out of memory, a crash)
"""

import argparse
import csv
import io
import os
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # not on Windows: no running status there
    fcntl = None  # type: ignore[assignment]

import yaml

COLUMNS = ["run", "start", "overrides", "monitor", "best_val", "test", "steps", "wall_s", "status"]
STAMP = re.compile(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d(\.\d+)?")
LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+\]")


def find_runs(log_dir: Path, name: str | None) -> list[Path]:
    names = [log_dir / name] if name else sorted(p for p in log_dir.iterdir() if p.is_dir())
    found = []
    for folder in names:
        found += sorted(p for p in folder.glob("runs/*") if p.is_dir())
        found += sorted(
            (p for p in folder.glob("multirun/*/*") if p.is_dir() and p.name.isdigit()),
            key=lambda p: (str(p.parent), int(p.name)),
        )
    return found


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def read_metrics(run: Path) -> list[tuple[int, str, float]]:
    rows = []
    try:
        with open(run / "csv" / "metrics.csv", newline="") as f:
            for row in csv.DictReader(f):
                try:
                    rows.append((int(row["step"]), row["name"], float(row["value"])))
                except (KeyError, TypeError, ValueError):
                    continue  # a line cut short by a crash
    except OSError:
        pass
    return rows


def is_locked(run: Path) -> bool:
    """Whether a live process holds the run's lock: a shared lock is tried and dropped at once."""
    if fcntl is None or not (run / ".lock").is_file():
        return False
    try:
        fd = os.open(run / ".lock", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def status(run: Path, log: str, metrics: list[tuple[int, str, float]], config: dict) -> str:
    if is_locked(run):
        return "running"
    if (run / "error.txt").is_file() or re.search(r"\]\[ERROR\] - error:|^Traceback", log, re.M):
        return "failed"
    if re.search(r"received SIG(INT|TERM)", log):
        return "interrupted"
    logged_test = any(name.startswith("test/") for _, name, _ in metrics)
    tested = logged_test or re.search(r"\] - test: test/", log)  # with logger=none, only train.log shows it
    if tested or (config.get("test") is False and (run / "checkpoints" / "last.pt").is_file()):
        return "finished"
    return "failed"


def start_time(run: Path, log: str) -> datetime | None:
    m = LOG_TIME.search(log)
    if m:
        return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")
    stamp = STAMP.fullmatch(run.name) or STAMP.fullmatch(run.parent.name)
    if stamp:
        return datetime.strptime(stamp.group(0).split(".")[0], "%Y-%m-%d_%H-%M-%S")
    return None


def wall_seconds(run: Path, start: datetime | None) -> float | None:
    """From the start to the last write of the run's log, metrics or checkpoints."""
    files = [run / "train.log", run / "csv" / "metrics.csv", *run.glob("checkpoints/*.pt")]
    times = [p.stat().st_mtime for p in files if p.is_file()]
    if start is None or not times:
        return None
    return max(0.0, round(max(times) - start.timestamp(), 1))


def best_of(metrics: list[tuple[int, str, float]], key: str, mode: str) -> float | None:
    values = [v for _, name, v in metrics if name == key and v == v]
    if not values:
        return None
    return min(values) if mode == "min" else max(values)


def row(run: Path, log_dir: Path) -> dict[str, Any]:
    log = _read_text(run / "train.log")
    config = _read_yaml(run / ".hydra" / "config.yaml") or _read_yaml(run / "config.yaml") or {}
    config = config if isinstance(config, dict) else {}
    overrides = _read_yaml(run / ".hydra" / "overrides.yaml")
    callbacks = config["callbacks"] if isinstance(config.get("callbacks"), dict) else {}
    ckpt = callbacks.get("model_checkpoint") or {}
    monitor, mode = str(ckpt.get("monitor", "val/loss")), str(ckpt.get("mode", "min"))
    metrics = read_metrics(run)
    test_key = "test/" + monitor.split("/", 1)[-1]
    tests = [v for _, name, v in metrics if name == test_key]
    start = start_time(run, log)
    return {
        "run": str(run.relative_to(log_dir)) if run.is_relative_to(log_dir) else str(run),
        "start": start.strftime("%Y-%m-%d %H:%M:%S") if start else None,
        "overrides": " ".join(map(str, overrides)) if isinstance(overrides, list) else "",
        "monitor": monitor,
        "best_val": best_of(metrics, monitor, mode),
        "test": tests[-1] if tests else None,
        "steps": max((s for s, _, _ in metrics), default=None),
        "wall_s": wall_seconds(run, start),
        "status": status(run, log, metrics, config),
    }


def sort_rows(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """By `key` (a column; `-key` for descending); empty values last either way."""
    desc, column = key.startswith("-"), key.lstrip("-")
    present = [r for r in rows if r[column] is not None]
    missing = [r for r in rows if r[column] is None]
    return sorted(present, key=lambda r: r[column], reverse=desc) + missing


def _cell(v: Any, width: int | None = None) -> str:
    text = "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)
    return text if width is None or len(text) <= width else text[: width - 1] + "…"


def as_table(rows: list[dict[str, Any]], max_overrides: int = 48) -> str:
    """The rows as aligned text; overrides every run shares are said once, above the table."""
    split = [r["overrides"].split() for r in rows]
    common = [o for o in split[0] if all(o in s for s in split[1:])] if len(rows) > 1 else []
    rows = [{**r, "overrides": " ".join(o for o in s if o not in common)} for r, s in zip(rows, split)]
    cells = [[_cell(r[c], max_overrides if c == "overrides" else None) for c in COLUMNS] for r in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(COLUMNS)]
    lines = [COLUMNS, *cells]
    head = f"overrides of every run: {' '.join(common)}\n" if common else ""
    return head + "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in lines)


def as_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
    return out.getvalue()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bigmodel runs", description="List the runs under the log dir.")
    parser.add_argument("name", nargs="?", help="only the runs of this name (a folder under the log dir)")
    parser.add_argument(
        "--logdir",
        default=os.environ.get("BIGMODEL_LOG_DIR", "logs"),
        help="the log dir (default: $BIGMODEL_LOG_DIR or ./logs)",
    )
    parser.add_argument("--sort", default="start", help=f"a column ({', '.join(COLUMNS)}); -column for descending")
    parser.add_argument("-r", "--reverse", action="store_true", help="sort in descending order")
    parser.add_argument("--csv", action="store_true", help="CSV on stdout instead of a table")
    args = parser.parse_args(argv)
    log_dir = Path(args.logdir)
    if args.sort.lstrip("-") not in COLUMNS:
        sys.exit(f"bigmodel runs: --sort {args.sort!r} is not a column; valid: {', '.join(COLUMNS)}")
    if not log_dir.is_dir():
        sys.exit(f"bigmodel runs: --logdir {str(log_dir)!r} is not a folder (runs go to $BIGMODEL_LOG_DIR or ./logs)")
    if args.name and not (log_dir / args.name).is_dir():
        names = sorted(p.name for p in log_dir.iterdir() if p.is_dir())
        sys.exit(f"bigmodel runs: no runs named {args.name!r} under {log_dir}; valid: {', '.join(names) or 'none yet'}")
    key = ("-" if args.sort.startswith("-") != args.reverse else "") + args.sort.lstrip("-")
    rows = sort_rows([row(run, log_dir) for run in find_runs(log_dir, args.name)], key)
    if args.csv:
        sys.stdout.write(as_csv(rows))
    else:
        print(as_table(rows) if rows else f"no runs under {log_dir}")
