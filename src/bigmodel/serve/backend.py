"""The models `bigmodel serve` answers with: a text classifier, an image classifier, a GPT.

Each is rebuilt by `bigmodel.restore.restore_model` and reads its inputs exactly as training did:
texts through the checkpoint's vocabulary (`bigmodel.predict.classify`), images decoded, resized and
normalized as the image data module does, prompts sampled by `bigmodel.generate.sample_text`.
`load_backend` is the one place a served model comes from; `prepare` checks one input of a request
(raising RequestError, answered as a 4xx), `run` answers a whole batch of them.
"""

import secrets
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
from omegaconf import OmegaConf

from bigmodel import checkpoint
from bigmodel.config import ConfigError
from bigmodel.data.errors import DataError
from bigmodel.data.images import normalize
from bigmodel.data.tokenizers import tokenizer_from_state
from bigmodel.data.vocab import Vocab
from bigmodel.generate import RANGES, check_option, check_top_k, sample_text, stop_strings
from bigmodel.predict import classify
from bigmodel.restore import Restored, restore_model
from bigmodel.serve.images import ImageRefused, decode_image


class RequestError(ValueError):
    """A request the model cannot answer: the server returns `status` with this one-line message."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Limits:
    """What one request may ask for (configs/serve.yaml says what each is)."""

    max_items: int = 64
    max_text_chars: int = 10_000
    max_image_pixels: int = 4096 * 4096
    max_new_tokens: int = 1024


class Classifier(Protocol):
    task: str
    input_key: str  # "texts" or "images": the request's field

    def prepare(self, value: Any, where: str) -> Any: ...  # one input, checked and decoded

    def run(self, items: list[Any]) -> list[dict]: ...  # one batch of prepared inputs -> predictions

    def info(self) -> dict: ...


def labelled(probs: torch.Tensor, names: list[str]) -> list[dict]:
    """Per row of class probabilities (N, C): the most likely class name and every class's probability."""
    return [{"label": names[max(range(len(row)), key=row.__getitem__)],
             "probabilities": {n: round(p, 6) for n, p in zip(names, row)}} for row in probs.tolist()]


def describe(restored: Restored, task: str, **extra: Any) -> dict:
    """What GET /v1/model answers: the task, the checkpoint's config, its best validation metric."""
    monitor = OmegaConf.select(restored.config, "callbacks.model_checkpoint.monitor")
    best = (restored.callbacks.get("model_checkpoint") or {}).get("best")
    return {"task": task, "checkpoint": restored.path, "model": restored.config.model.get("_target_"),
            "parameters": sum(p.numel() for p in restored.model.parameters()), **extra,
            "metrics": {monitor: best} if monitor and best is not None else {},
            "progress": {k: restored.progress.get(k) for k in ("global_step", "epoch")},
            "config": OmegaConf.to_container(restored.config, resolve=False)}


class TextClassifier:
    task, input_key = "text-classification", "texts"

    def __init__(self, restored: Restored, device: torch.device, limits: Limits) -> None:
        self.model, self.device, self.limits = restored.model, device, limits
        self.vocab, self.names = Vocab.from_state(restored.data["vocab"]), list(restored.data["class_names"])
        self._info = describe(restored, self.task, classes=self.names)

    def prepare(self, value: Any, where: str) -> str:
        if not isinstance(value, str):
            raise RequestError(f"{where} is not a string")
        if len(value) > self.limits.max_text_chars:
            raise RequestError(f"{where} has {len(value)} characters; at most {self.limits.max_text_chars} "
                               "(max_text_chars)", status=413)
        if not value.strip():
            raise RequestError(f"{where} is empty: give the text to classify")
        return value

    def run(self, items: list[str]) -> list[dict]:
        return labelled(classify(self.model, self.vocab, items, device=self.device), self.names)

    def info(self) -> dict:
        return self._info


class ImageClassifier:
    task, input_key = "image-classification", "images"

    def __init__(self, restored: Restored, device: torch.device, limits: Limits) -> None:
        self.model, self.device, self.limits = restored.model, device, limits
        data = restored.data
        self.names, self.size = list(data["class_names"]), int(data["image_size"][0])
        self.mean, self.std = torch.tensor(data["mean"]), torch.tensor(data["std"])
        self.memory_format = torch.contiguous_format  # as the run trained (trainer.channels_last): often faster
        if OmegaConf.select(restored.config, "trainer.channels_last", default=False):
            self.memory_format = torch.channels_last
            self.model.to(memory_format=self.memory_format)
        self._info = describe(restored, self.task, classes=self.names, image_size=list(data["image_size"]),
                              mean=list(data["mean"]), std=list(data["std"]))

    def prepare(self, value: Any, where: str) -> torch.Tensor:
        if not isinstance(value, (bytes, bytearray)):
            raise RequestError(f"{where} is not an encoded image")
        try:
            return decode_image(bytes(value), self.size, self.limits.max_image_pixels)
        except ImageRefused as e:
            raise RequestError(f"{where} {e}" + ("" if e.too_large else "; send a PNG or JPEG"),
                               status=413 if e.too_large else 422) from None

    @torch.inference_mode()
    def run(self, items: list[torch.Tensor]) -> list[dict]:
        x = normalize(torch.stack(items), self.mean, self.std).to(self.device)  # (B, C, H, W)
        x = x.contiguous(memory_format=self.memory_format)
        return labelled(self.model(x).float().softmax(-1).cpu(), self.names)

    def info(self) -> dict:
        return self._info


SAMPLING = {"temperature": 0.8, "top_k": None, "top_p": 1.0, "repetition_penalty": 1.0}  # as bigmodel generate


class TextGenerator:
    task = "text-generation"

    def __init__(self, restored: Restored, device: torch.device, limits: Limits) -> None:
        if not hasattr(restored.model, "stream"):
            raise checkpoint.CheckpointError(f"ckpt_path={restored.path!r}: {type(restored.model).__name__} "
                                             "cannot generate text")
        self.model, self.device, self.limits = restored.model, device, limits
        self.tokenizer = tokenizer_from_state(restored.data["tokenizer"])
        self._info = describe(restored, self.task, vocab_size=self.model.vocab_size,
                              block_size=getattr(self.model, "block_size", None))

    def options(self, request: dict) -> dict:
        """The sampling options of a request, each checked as `bigmodel generate` checks it; the seed
        (drawn when not given) is returned too, so a sample can be reproduced."""
        opts = {k: request.get(k, v) for k, v in {**SAMPLING, "max_new_tokens": 100}.items()}
        opts["seed"] = secrets.randbits(31) if request.get("seed") is None else request["seed"]
        try:
            for key in RANGES.keys() & opts.keys():
                check_option(key, opts[key])
            if not 0 <= opts["seed"] < 2**63:
                raise ConfigError(f"seed={opts['seed']} is not valid: use an integer from 0 to 2**63 - 1")
            check_top_k(opts["top_k"], self.model.vocab_size)
            opts["stop"] = stop_strings(request.get("stop") or [])
        except ConfigError as e:
            raise RequestError(str(e)) from None
        if opts["max_new_tokens"] > self.limits.max_new_tokens:
            raise RequestError(f"max_new_tokens={opts['max_new_tokens']} is more than this server allows: "
                               f"at most {self.limits.max_new_tokens} (max_new_tokens)")
        return opts

    def check_prompt(self, prompt: Any) -> str:
        if not isinstance(prompt, str):
            raise RequestError("prompt is not a string")
        if len(prompt) > self.limits.max_text_chars:
            raise RequestError(f"prompt has {len(prompt)} characters; at most {self.limits.max_text_chars} "
                               "(max_text_chars)", status=413)
        try:
            self.tokenizer.encode(prompt)
        except DataError as e:
            raise RequestError(f"prompt: {e}") from None
        return prompt

    def generate(self, prompt: str, opts: dict, on_text: Callable[[str], None] | None = None) -> str:
        """The continuation of `prompt` (without it); `on_text` receives each new piece as it appears."""
        options = {k: v for k, v in opts.items() if k != "seed"}
        generator = torch.Generator(device=self.device).manual_seed(int(opts["seed"]))
        text = sample_text(self.model, self.tokenizer, prompt, generator=generator, device=self.device,
                           on_text=on_text, **options)
        return text[len(prompt):]

    def info(self) -> dict:
        return self._info


Backend = TextClassifier | ImageClassifier | TextGenerator


def load_backend(ckpt_path: str | None, model_path: str | None, device: torch.device, limits: Limits) -> Backend:
    """The served model, from a `bigmodel train` checkpoint (ckpt_path) or an exported folder (model_path);
    which kind it is follows from what the checkpoint's data module saved."""
    if (ckpt_path is None) == (model_path is None):
        raise ConfigError("give exactly one of ckpt_path=PATH (a checkpoint from bigmodel train) or "
                          "model_path=DIR (a folder written by bigmodel export)")
    if model_path is not None:
        raise ConfigError(f"model_path={model_path!r}: serving an exported folder is not available in this "
                          "version; serve the checkpoint it came from with ckpt_path=")
    restored = restore_model(ckpt_path, device)
    data = restored.data
    if "tokenizer" in data:
        return TextGenerator(restored, device, limits)
    if "vocab" in data and "class_names" in data:
        return TextClassifier(restored, device, limits)
    if {"class_names", "mean", "std", "image_size"} <= data.keys():
        return ImageClassifier(restored, device, limits)
    raise checkpoint.CheckpointError(f"ckpt_path={ckpt_path!r}: its data state has none of a vocabulary, an "
                                     "image size or a tokenizer, so there is no way to feed it requests")
