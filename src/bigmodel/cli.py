"""`bigmodel <command> [overrides]`: each command is a Hydra app over the shipped configs."""

import importlib
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

COMMANDS = {  # name -> (config name, "module:function", one-line help)
    "train": ("train", "bigmodel.train:train", "train a model (default: the CIFAR-10 CNN)"),
    "eval": ("eval", "bigmodel.train:evaluate", "evaluate a checkpoint: bigmodel eval ckpt_path=..."),
    "predict": ("predict", "bigmodel.predict:predict", "classify text with a checkpoint: text=... or input_file=..."),
    "generate": ("generate", "bigmodel.generate:generate", "sample text from a GPT checkpoint: prompt=..."),
}

FREE_TEXT = {"predict": "text", "generate": "prompt"}  # command -> the key whose value is free text

USAGE = """usage: bigmodel <command> [key=value ...] [-m] [--help]

commands:
{commands}
  tensorboard  open TensorBoard on the runs folder (--logdir DIR, default $BIGMODEL_LOG_DIR or ./logs)

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
            v = arg[len(key) + 1:]
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


def run_app(command: str, argv: list[str]) -> None:
    import hydra

    from bigmodel.config import register_schemas

    config_name, target, _ = COMMANDS[command]
    module, fn_name = target.split(":")
    task = getattr(importlib.import_module(module), fn_name)
    user_errors = _user_errors()

    def job(cfg) -> object:
        from hydra.errors import InstantiationException

        try:
            return task(cfg)
        except user_errors as e:  # the user's data, files or settings: one clear line, no traceback
            logging.getLogger("bigmodel").error(f"error: {e}")
            sys.exit(1)
        except InstantiationException as e:  # a constructor refused a setting (e.g. model.init_from)
            if not isinstance(e.__cause__, user_errors):
                raise
            logging.getLogger("bigmodel").error(f"error: {e.__cause__}")
            sys.exit(1)

    register_schemas()
    sys.argv = [f"bigmodel {command}", *argv]
    hydra.main(version_base="1.3", config_path=config_dir(), config_name=config_name)(job)()


def tensorboard(argv: list[str]) -> None:
    if "--logdir" not in " ".join(argv):
        argv = ["--logdir", os.environ.get("BIGMODEL_LOG_DIR", "logs"), *argv]
    sys.exit(subprocess.call([sys.executable, "-m", "tensorboard.main", *argv]))


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        commands = "\n".join(f"  {name:<12} {help_}" for name, (_, _, help_) in COMMANDS.items())
        print(USAGE.format(commands=commands))
        return
    command, rest = argv[0], argv[1:]
    if command == "tensorboard":
        return tensorboard(rest)
    if command not in COMMANDS:
        sys.exit(f"bigmodel: unknown command {command!r}; valid: {', '.join([*COMMANDS, 'tensorboard'])}")
    if command == "train":
        from bigmodel.launch import prepare

        rest = prepare(rest)  # trainer.devices=N > 1: re-runs this command under torchrun
    if command in FREE_TEXT:
        rest = quote_free_text(rest, FREE_TEXT[command])  # text="a , b": free text, not override syntax
    run_app(command, rest)
