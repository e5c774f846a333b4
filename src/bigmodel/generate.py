"""`bigmodel generate ckpt_path=... prompt=...`: sample text from a GPT checkpoint.

The model's config and weights and the tokenizer all come from the checkpoint; tokens are printed
as they are produced. Sampling uses its own seeded generator, so a seed gives the same samples.
"""

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig

from bigmodel import checkpoint
from bigmodel.config import ConfigError, Device, Precision, TrainerConfig
from bigmodel.data.text_files import read_text
from bigmodel.data.tokenizers import tokenizer_from_state
from bigmodel.models.text_sample import sample_text
from bigmodel.restore import restore_model
from bigmodel.runtime import Runtime
from bigmodel.runtime import resolve_device as torch_device

log = logging.getLogger("bigmodel")


def load_for_generation(ckpt_path: str, device: torch.device):
    """(model in eval mode on device, tokenizer) from a checkpoint written by `bigmodel train`, or
    from a folder holding a Hugging Face GPT-2 checkpoint (config.json and its weights)."""
    if Path(ckpt_path).expanduser().is_dir():
        from bigmodel.models.gpt2 import load_pretrained, pretrained_tokenizer

        return load_pretrained(ckpt_path).to(device), pretrained_tokenizer(ckpt_path)
    restored = restore_model(
        ckpt_path,
        device,
        needs={
            "tokenizer": (
                f"ckpt_path={ckpt_path!r} has no tokenizer: not a language-model checkpoint "
                "(train one with model=gpt data=shakespeare_char)"
            )
        },
    )
    if not hasattr(restored.model, "stream"):
        raise checkpoint.CheckpointError(
            f"ckpt_path={ckpt_path!r}: {type(restored.model).__name__} cannot generate text"
        )
    return restored.model, tokenizer_from_state(restored.data["tokenizer"])


RANGES = {  # key -> (type, test, what is valid)
    "max_new_tokens": (int, lambda v: v >= 1, "an integer >= 1"),
    "temperature": (float, lambda v: v >= 0, "a number >= 0 (0 = always the most likely token)"),
    "top_k": (int, lambda v: v >= 1, "null (no limit) or an integer from 1 to the vocabulary size"),
    "top_p": (float, lambda v: 0 < v <= 1, "a number in (0, 1] (1 = off)"),
    "repetition_penalty": (float, lambda v: v > 0, "a number > 0 (1 = off, > 1 makes repeats less likely)"),
    "num_samples": (int, lambda v: v >= 1, "an integer >= 1"),
    "num_threads": (int, lambda v: v >= 0, "an integer >= 0 (0 = torch's default)"),
    "seed": (int, lambda v: True, "an integer"),
}


def check_options(cfg: DictConfig) -> None:
    """Every sampling option in range, before the model is loaded: one line naming the key otherwise."""
    if not cfg.get("ckpt_path"):
        raise ConfigError(
            "ckpt_path is required: a checkpoint from `bigmodel train` (model=gpt), or a "
            "folder with a Hugging Face GPT-2 checkpoint (config.json + model.safetensors)"
        )
    for key in RANGES:
        check_option(key, cfg.get(key))
    precision_of(cfg.precision)
    if not isinstance(cfg.get("cache"), bool):
        raise ConfigError(f"cache={cfg.get('cache')!r} is not valid: use true (reuse keys and values) or false")
    stop_strings(cfg.get("stop"))
    if cfg.get("prompt_file") and str(cfg.get("prompt")) != "\n":  # "\n": the default
        raise ConfigError("give prompt= or prompt_file=, not both")


def check_option(key: str, v) -> None:
    """One sampling option (a key of RANGES) of the right type and in range, else one line naming it."""
    kind, ok, valid = RANGES[key]
    if key == "top_k" and v is None:
        return
    typed = isinstance(v, (int, float) if kind is float else int) and not isinstance(v, bool)
    if not typed or not ok(v):  # NaN fails every comparison
        raise ConfigError(f"{key}={v!r} is not valid: use {valid}")


def stop_strings(stop) -> list[str]:
    """`stop` as a list of strings (one string, a list, or null for none); a typed "\\n" is a newline."""
    stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, (list, ListConfig)) or not all(isinstance(s, str) and s for s in stops):
        raise ConfigError(
            f"stop={stop!r} is not valid: use a non-empty string or a list of them, e.g. stop='[\"\\n\\n\", THE END]'"
        )
    return [s.replace("\\n", "\n") for s in stops]


PRECISIONS = {"32": Precision.fp32, "fp32": Precision.fp32, "bf16": Precision.bf16}


def precision_of(value) -> Precision:
    """generate's `precision` setting as the Precision the Runtime autocasts to."""
    if str(value) not in PRECISIONS:
        raise ConfigError(f"precision={value!r} is not valid: use 32 (float32) or bf16")
    return PRECISIONS[str(value)]


def resolve_device(name: str) -> torch.device:
    if name not in Device.__members__:
        raise ConfigError(f"device={name!r} is not valid: use auto, cpu or cuda")
    return torch_device(Device[name], key="device")


def check_top_k(top_k: int | None, vocab_size: int) -> None:
    if top_k is not None and top_k > vocab_size:
        raise ConfigError(
            f"top_k={top_k} is larger than this model's vocabulary of {vocab_size} tokens: "
            f"use 1 to {vocab_size}, or null for no limit"
        )


def generate(cfg: DictConfig) -> list[str]:
    """Print `num_samples` continuations of the prompt; returns them."""
    resolve_device(str(cfg.device))  # the device first: one line naming it
    check_options(cfg)
    runtime = Runtime(
        TrainerConfig(
            device=Device[str(cfg.device)], precision=precision_of(cfg.precision), num_threads=cfg.num_threads
        ),
        device_key="device",
    ).init()
    device = runtime.device
    model, tokenizer = load_for_generation(cfg.ckpt_path, device)
    prompt = read_text(Path(cfg.prompt_file), "utf-8", key=None) if cfg.prompt_file else str(cfg.prompt)
    prompt = prompt.replace("\\n", "\n")  # a typed "\n" on the command line means a newline
    check_top_k(cfg.top_k, model.vocab_size)
    tokenizer.encode(prompt)  # an unknown character fails here, before anything is printed
    generator = torch.Generator(device=device).manual_seed(int(cfg.seed))
    options = dict(
        max_new_tokens=cfg.max_new_tokens,
        temperature=float(cfg.temperature),
        top_k=cfg.top_k,
        top_p=float(cfg.top_p),
        repetition_penalty=float(cfg.repetition_penalty),
        stop=stop_strings(cfg.stop),
        use_cache=cfg.cache,
    )
    samples = []
    for i in range(int(cfg.num_samples)):
        print(f"--- sample {i + 1}/{cfg.num_samples}", flush=True)
        print(prompt, end="", flush=True)
        text = sample_text(
            model,
            tokenizer,
            prompt,
            generator=generator,
            device=device,
            autocast=runtime.autocast,
            on_text=lambda piece: print(piece, end="", flush=True),
            **options,
        )
        print(flush=True)
        samples.append(text)
    return samples
