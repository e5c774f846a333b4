"""`bigmodel <command> [overrides]`: each command is a Hydra app over the shipped configs."""

import errno
import logging
import os
import re
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

COMMANDS = {  # name -> (config name, one-line help); the function each runs: command_function below
    "train": ("train", "train a model (default: the CIFAR-10 CNN)"),
    "eval": ("eval", "evaluate a checkpoint: bigmodel eval ckpt_path=..."),
    "predict": ("predict", "classify text with a checkpoint: text=... or input_file=..."),
    "generate": ("generate", "sample text from a GPT checkpoint: prompt=..."),
    "export": ("export", "a checkpoint as ONNX or a .pt2 program: ckpt_path=... format=onnx|pt2"),
    "quantize": ("quantize", "int8 copy of a model (ckpt_path= or model_path=) with size, accuracy, latency"),
    "prune": ("prune", "magnitude-prune a checkpoint: ckpt_path=... amount=0.5 [structured=true]"),
    "serve": ("serve", "an HTTP server for a checkpoint or an exported folder: ckpt_path=... [port=8000]"),
    "lr_find": ("lr_find", "sweep the learning rate over a few steps; suggests optimizer.lr"),
}


def command_function(command: str) -> Callable[[Any], object]:
    """The function `bigmodel <command>` runs with its composed config. Imported here, when the
    command runs, so `bigmodel --help` and `bigmodel runs` start without importing torch."""
    if command == "train":
        from bigmodel.train import train

        return train
    if command == "eval":
        from bigmodel.train import evaluate

        return evaluate
    if command == "predict":
        from bigmodel.predict import predict

        return predict
    if command == "generate":
        from bigmodel.generate import generate

        return generate
    if command == "export":
        from bigmodel.export import export

        return export
    if command == "quantize":
        from bigmodel.quantize import quantize

        return quantize
    if command == "prune":
        from bigmodel.prune import prune

        return prune
    if command == "serve":
        from bigmodel.serve.server import serve

        return serve
    if command == "lr_find":
        from bigmodel.lr_find import lr_find

        return lr_find
    raise KeyError(command)


FREE_TEXT = {"predict": "text", "generate": "prompt"}  # command -> the key whose value is free text

USAGE = """usage: bigmodel <command> [key=value ...] [-m] [--help]

commands:
{commands}
  tensorboard  open TensorBoard on the runs folder (--logdir DIR, default $BIGMODEL_LOG_DIR or ./logs)
  runs         a table of the runs: status, best val metric, test metric, steps ([name] --sort KEY --csv --logdir DIR)

`bigmodel <command> --help` lists the config groups (model, data, optimizer, scheduler, trainer,
logger, callbacks, experiment, debug, ...) with their choices and the composed config.
examples:
  bigmodel train model=cnn optimizer=sgd optimizer.lr=0.05 trainer.max_epochs=3 seed=1
  bigmodel train experiment=sst2_lstm
  bigmodel train -m optimizer.lr=1e-3,3e-3 trainer.max_steps=10
  bigmodel eval ckpt_path=logs/<run>/checkpoints/best.pt
"""


def quote_free_text(argv: list[str], key: str) -> list[str]:
    """`key=a gripping , funny film` as one Hydra string: commas, quotes, `=`, `[`, `${` in free text
    would otherwise be read as override syntax (a sweep, a list, an interpolation). A value the user
    already quoted for Hydra ('...' or "...") is left alone."""
    out = []
    for arg in argv:
        if arg.startswith(f"{key}="):
            v = arg[len(key) + 1 :]
            if not (len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"" and v[0] not in v[1:-1]):
                v = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", v)  # Hydra escapes: see its grammar
                v = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, v)
                v = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", v)  # not an interpolation
                arg = f"{key}='{v}'"
        out.append(arg)
    return out


def config_dir() -> str:
    """The shipped configs: bigmodel/configs in an installed wheel, <repo>/configs in a checkout."""
    packaged = Path(__file__).parent / "configs"
    return str(packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "configs")


def _user_errors() -> tuple[type[BaseException], ...]:
    from bigmodel.checkpoint import CheckpointError
    from bigmodel.config import ConfigError
    from bigmodel.data.errors import DataError

    return (DataError, CheckpointError, ConfigError, FileNotFoundError, FloatingPointError)


DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)  # a full disk, a quota, a read-only file system


def user_message(e: BaseException, user_errors: tuple[type[BaseException], ...]) -> str | None:
    """The one line to print for an error caused by the user's data, files, settings or disk; None
    for anything else (a bug, which keeps its traceback)."""
    from hydra.errors import InstantiationException

    if isinstance(e, InstantiationException) and e.__cause__ is not None:  # a constructor refused a setting
        e = e.__cause__
    if isinstance(e, user_errors):
        return str(e)
    if isinstance(e, OSError) and e.errno in DISK_ERRORS:
        where = f" {e.filename}" if e.filename else ""
        return f"could not write{where}: {e.strerror}; free space or write elsewhere (paths.log_dir)"
    return None


def run_app(command: str, argv: list[str]) -> None:
    import hydra

    from bigmodel import launch
    from bigmodel.config import register_schemas
    from bigmodel.rundir import register_resolver
    from bigmodel.train import in_sweep

    config_name = COMMANDS[command][0]
    task = command_function(command)
    user_errors = _user_errors()

    def job(cfg) -> object:
        try:
            return task(cfg)
        except Exception as e:
            message = user_message(e, user_errors)
            if in_sweep():  # one failed job does not stop a sweep: record it, run the next
                launch.job_failed(message or f"{type(e).__name__}: {e}", None if message else traceback.format_exc())
                return None
            if message is None:
                raise
            logging.getLogger("bigmodel").error(f"error: {message}")  # one clear line, no traceback
            sys.exit(1)

    register_schemas()
    register_resolver()  # ${bigmodel.new_dir:...} in configs/hydra/default.yaml: one new folder per run
    sys.argv = [f"bigmodel {command}", *argv]  # hydra.main parses sys.argv (overrides, -m, --cfg ...)
    hydra.main(version_base="1.3", config_path=config_dir(), config_name=config_name)(job)()


def tensorboard(argv: list[str]) -> None:
    if "--logdir" not in " ".join(argv):
        argv = ["--logdir", os.environ.get("BIGMODEL_LOG_DIR", "logs"), *argv]
    sys.exit(subprocess.call([sys.executable, "-m", "tensorboard.main", *argv]))


def main(argv: list[str] | None = None) -> None:
    try:
        dispatch(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:  # Ctrl-C before the Trainer handles signals (or a second one): no traceback
        print("bigmodel: interrupted", file=sys.stderr)
        sys.exit(130)


def valid_name(name: str) -> bool:
    name = name.strip("'\"")
    parts = name.split("/")
    return bool(name) and not name.startswith(("/", "~")) and all(p and p not in (".", "..") for p in parts)


def dispatch(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help", "help"):
        commands = "\n".join(f"  {name:<12} {help_}" for name, (_, help_) in COMMANDS.items())
        print(USAGE.format(commands=commands))
        return
    command, rest = argv[0], argv[1:]
    if command == "tensorboard":
        return tensorboard(rest)
    if command == "runs":
        from bigmodel import runs

        return runs.main(rest)
    if command not in COMMANDS:
        sys.exit(f"bigmodel: unknown command {command!r}; valid: {', '.join([*COMMANDS, 'tensorboard', 'runs'])}")
    for arg in rest:  # the run's folder is <log_dir>/<name>/...: a name may not leave the log folder
        if arg.startswith("name=") and not valid_name(arg[len("name=") :]):
            sys.exit(
                f"bigmodel {command}: {arg!r} is not a valid run name: give a folder name, or non-empty parts "
                "joined by '/', that stays inside the log folder (no '..', no leading '/' or '~')"
            )
    if command == "train":
        from bigmodel.launch import prepare

        rest = prepare(rest)  # trainer.devices=N > 1: re-runs this command under torchrun
    if command in FREE_TEXT:
        rest = quote_free_text(rest, FREE_TEXT[command])  # text="a , b": free text, not override syntax
    run_app(command, rest)
