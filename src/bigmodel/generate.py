"""`bigmodel generate ckpt_path=... prompt=...`: sample text from a GPT checkpoint.

The model's config and weights and the tokenizer all come from the checkpoint; tokens are printed
as they are produced. Sampling uses its own seeded generator, so a seed gives the same samples.
"""

import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from bigmodel import checkpoint
from bigmodel.data.errors import DataError
from bigmodel.data.text_files import read_text
from bigmodel.data.tokenizers import tokenizer_from_state

log = logging.getLogger("bigmodel")


def sample_text(model: torch.nn.Module, tokenizer, prompt: str, *, max_new_tokens: int, temperature: float,
                top_k: int | None, generator: torch.Generator, device: torch.device,
                on_text: Callable[[str], None] | None = None, autocast=nullcontext) -> str:
    """The prompt and its continuation as text; `on_text` receives each new piece as it appears."""
    ids = tokenizer.encode(prompt) if prompt else tokenizer.start_ids()
    idx = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
    new: list[int] = []
    shown = ""
    was_training = model.training
    model.eval()
    try:
        with autocast():
            for tok in model.stream(idx, max_new_tokens, temperature, top_k, generator):
                new.append(int(tok[0, 0]))
                text = tokenizer.decode(new)
                if on_text is not None and not text.endswith("\ufffd"):  # wait for whole UTF-8 characters
                    on_text(text[len(shown):])
                    shown = text
    finally:
        model.train(was_training)
    text = tokenizer.decode(new)
    if on_text is not None and len(text) > len(shown):
        on_text(text[len(shown):])
    return (prompt if prompt else "") + text


def load_for_generation(ckpt_path: str, device: torch.device):
    """(model in eval mode on device, tokenizer) from a checkpoint written by `bigmodel train`."""
    ckpt = checkpoint.load(ckpt_path)
    data = ckpt.get("data") or {}
    if "tokenizer" not in data:
        raise checkpoint.CheckpointError(f"ckpt_path={ckpt_path!r} has no tokenizer: not a language-model "
                                         "checkpoint (train one with model=gpt data=shakespeare_char)")
    model = instantiate(OmegaConf.create(ckpt["config"]).model, **ckpt["model_args"])
    if not hasattr(model, "stream"):
        raise checkpoint.CheckpointError(f"ckpt_path={ckpt_path!r}: {type(model).__name__} cannot generate text")
    checkpoint.load_model_state(model, ckpt["model"], ckpt_path)
    return model.to(device).eval(), tokenizer_from_state(data["tokenizer"])


def generate(cfg: DictConfig) -> list[str]:
    """Print `num_samples` continuations of the prompt; returns them."""
    device = torch.device(cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    model, tokenizer = load_for_generation(cfg.ckpt_path, device)
    prompt = read_text(Path(cfg.prompt_file), "utf-8", key=None) if cfg.prompt_file else str(cfg.prompt)
    prompt = prompt.replace("\\n", "\n")  # a typed "\n" on the command line means a newline
    if cfg.top_k is not None and cfg.top_k < 1:
        raise DataError(f"top_k={cfg.top_k} must be >= 1 (or null for no limit)")
    tokenizer.encode(prompt)  # an unknown character fails here, before anything is printed
    generator = torch.Generator(device=device).manual_seed(int(cfg.seed))
    bf16 = cfg.precision == "bf16"
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else nullcontext
    samples = []
    for i in range(int(cfg.num_samples)):
        print(f"--- sample {i + 1}/{cfg.num_samples}", flush=True)
        print(prompt, end="", flush=True)
        text = sample_text(model, tokenizer, prompt, max_new_tokens=int(cfg.max_new_tokens),
                           temperature=float(cfg.temperature), top_k=cfg.top_k, generator=generator,
                           device=device, autocast=autocast,
                           on_text=lambda piece: print(piece, end="", flush=True))
        print(flush=True)
        samples.append(text)
    return samples
