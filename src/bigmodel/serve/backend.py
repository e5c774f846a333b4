"""The models `bigmodel serve` answers with: a text classifier, an image classifier, a GPT.

Each is rebuilt by `bigmodel.restore.restore_model` and reads its inputs exactly as training did:
texts through the checkpoint's vocabulary (`bigmodel.predict.classify`), images decoded, resized and
normalized as the image data module does, prompts sampled by `bigmodel.generate.sample_text`.
`load_backend` is the one place a served model comes from; `prepare` checks one input of a request
(raising RequestError, answered as a 4xx), `run` answers a whole batch of them.
"""

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from omegaconf import OmegaConf

from bigmodel import checkpoint
from bigmodel.config import ConfigError
from bigmodel.data.errors import DataError
from bigmodel.data.images import normalize
from bigmodel.data.tokenizers import tokenizer_from_state
from bigmodel.data.vocab import Vocab
from bigmodel.generate import RANGES, check_option, check_top_k, stop_strings
from bigmodel.models.text_sample import sample_text
from bigmodel.predict import classify
from bigmodel.restore import Restored, restore_model
from bigmodel.runtime import autocast_to
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
    return [
        {
            "label": names[max(range(len(row)), key=row.__getitem__)],
            "probabilities": {n: round(p, 6) for n, p in zip(names, row)},
        }
        for row in probs.tolist()
    ]


@dataclass
class Loaded:
    """A model to serve, from a checkpoint or from a folder written by `bigmodel export`."""

    model: Any  # an nn.Module, or bigmodel.exported.Exported: called with the inputs, returns logits
    data: dict[str, Any]  # the data module's saved state: class names, vocabulary, image settings, tokenizer
    info: dict[str, Any]  # for GET /v1/model: where it came from, its config and best validation metric
    channels_last: bool = False  # the run trained in channels_last (often faster for a CNN on CPU)
    trained_bf16: bool = False  # the run trained (and validated) under bf16 autocast


def inference_dtype(loaded: Loaded, precision: str) -> torch.dtype | None:
    """The autocast dtype a classifier runs under (None: fp32): `precision` is serve's key (auto | fp32 |
    bf16); auto follows the checkpoint, so the server computes as validation did. An exported model
    runs as it was exported, and a GPT samples in fp32."""
    if precision == "bf16" and "tokenizer" in loaded.data:
        raise ConfigError("precision=bf16 applies to classifiers; a GPT samples in fp32: use auto or fp32")
    if precision == "bf16" and loaded.info.get("model_path"):
        raise ConfigError(
            "precision=bf16 applies to a checkpoint (ckpt_path=); an exported model (model_path=) runs "
            "as it was exported: use precision=auto or fp32"
        )
    bf16 = precision == "bf16" or (precision == "auto" and loaded.trained_bf16)
    return torch.bfloat16 if bf16 else None


def from_checkpoint(restored: Restored) -> Loaded:
    info = {
        "checkpoint": restored.path,
        "model": restored.config.model.get("_target_"),
        "parameters": sum(p.numel() for p in restored.model.parameters()),
        "metrics": restored.best_metric(),
        "progress": {k: restored.progress.get(k) for k in ("global_step", "epoch")},
        "config": OmegaConf.to_container(restored.config, resolve=False),
    }
    return Loaded(
        restored.model,
        dict(restored.data),
        info,
        bool(OmegaConf.select(restored.config, "trainer.channels_last", default=False)),
        str(OmegaConf.select(restored.config, "trainer.precision", default="32")) == "bf16",
    )


def from_exported(exported: Any) -> Loaded:
    """An exported folder (bigmodel.exported.Exported), described by its bigmodel.json."""
    spec, source = exported.spec, exported.spec.get("source") or {}
    info = {
        "model_path": str(exported.path),
        "format": exported.format,
        "model": spec.get("model_class"),
        "parameters": None,
        "checkpoint": source.get("checkpoint"),
        "metrics": source.get("metrics") or {},
        "progress": {k: source.get(k) for k in ("global_step", "epoch")},
        "config": spec.get("config") or {},
    }
    return Loaded(exported, dict(spec.get("data") or {}), info)


class TextClassifier:
    task, input_key = "text-classification", "texts"

    def __init__(self, loaded: Loaded, device: torch.device, limits: Limits, dtype: torch.dtype | None = None) -> None:
        self.model, self.device, self.limits, self.dtype = loaded.model, device, limits, dtype
        self.vocab, self.names = Vocab.from_state(loaded.data["vocab"]), list(loaded.data["class_names"])
        self._info = {"task": self.task, "classes": self.names, **loaded.info}

    def prepare(self, value: Any, where: str) -> str:
        if not isinstance(value, str):
            raise RequestError(f"{where} is not a string")
        if len(value) > self.limits.max_text_chars:
            raise RequestError(
                f"{where} has {len(value)} characters; at most {self.limits.max_text_chars} (max_text_chars)",
                status=413,
            )
        if not value.strip():
            raise RequestError(f"{where} is empty: give the text to classify")
        return value

    def run(self, items: list[str]) -> list[dict]:
        with autocast_to(self.device, self.dtype):
            return labelled(classify(self.model, self.vocab, items, device=self.device), self.names)

    def info(self) -> dict:
        return self._info


class ImageClassifier:
    task, input_key = "image-classification", "images"

    def __init__(self, loaded: Loaded, device: torch.device, limits: Limits, dtype: torch.dtype | None = None) -> None:
        self.model, self.device, self.limits, self.dtype = loaded.model, device, limits, dtype
        data = loaded.data
        try:
            self.names, self.size = [str(n) for n in data["class_names"]], int(data["image_size"][0])
            self.mean, self.std = (
                torch.tensor(data["mean"], dtype=torch.float),
                torch.tensor(data["std"], dtype=torch.float),
            )
        except (KeyError, IndexError, TypeError, ValueError) as e:
            where = loaded.info.get("model_path") or loaded.info.get("checkpoint")
            raise checkpoint.CheckpointError(
                f"{where}: its image settings (class_names, image_size, mean, std) are damaged "
                f"({type(e).__name__}: {e})"
            ) from None
        self.memory_format = torch.channels_last if loaded.channels_last else torch.contiguous_format
        if loaded.channels_last:
            self.model.to(memory_format=self.memory_format)
        self._info = {
            "task": self.task,
            "classes": self.names,
            "image_size": list(data["image_size"]),
            "mean": list(data["mean"]),
            "std": list(data["std"]),
            **loaded.info,
        }

    def prepare(self, value: Any, where: str) -> torch.Tensor:
        if not isinstance(value, (bytes, bytearray)):
            raise RequestError(f"{where} is not an encoded image")
        try:
            return decode_image(bytes(value), self.size, self.limits.max_image_pixels)
        except ImageRefused as e:
            raise RequestError(
                f"{where} {e}" + ("" if e.too_large else "; send a PNG or JPEG"), status=413 if e.too_large else 422
            ) from None

    @torch.inference_mode()
    def run(self, items: list[torch.Tensor]) -> list[dict]:
        x = normalize(torch.stack(items), self.mean, self.std).to(self.device)  # (B, C, H, W)
        x = x.contiguous(memory_format=self.memory_format)
        with autocast_to(self.device, self.dtype):
            logits = self.model(x)
        return labelled(logits.float().softmax(-1).cpu(), self.names)

    def info(self) -> dict:
        return self._info


MAX_STOP, MAX_STOP_CHARS = 16, 200  # stop strings a generate request may give (each is searched for per token)
SAMPLING = {"temperature": 0.8, "top_k": None, "top_p": 1.0, "repetition_penalty": 1.0}  # as bigmodel generate


class TextGenerator:
    task = "text-generation"

    def __init__(self, loaded: Loaded, device: torch.device, limits: Limits) -> None:
        where = loaded.info.get("model_path") or loaded.info.get("checkpoint")
        if not hasattr(loaded.model, "stream"):  # sampling reuses keys and values: the eager GPT's cache
            raise checkpoint.CheckpointError(
                f"{where}: this model cannot generate text here; serve a GPT from its checkpoint (ckpt_path=)"
            )
        self.model, self.device, self.limits = loaded.model, device, limits
        self.tokenizer = tokenizer_from_state(loaded.data["tokenizer"])
        self._info = {
            "task": self.task,
            "vocab_size": self.model.vocab_size,
            "block_size": getattr(self.model, "block_size", None),
            **loaded.info,
        }

    def options(self, request: dict) -> dict:
        """The sampling options of a request, each checked as `bigmodel generate` checks it; the seed
        (drawn when not given) is returned too, so a sample can be reproduced."""
        opts: dict[str, Any] = {k: request.get(k, v) for k, v in {**SAMPLING, "max_new_tokens": 100}.items()}
        opts["seed"] = secrets.randbits(31) if request.get("seed") is None else request["seed"]
        try:
            for key in RANGES.keys() & opts.keys():
                check_option(key, opts[key])
            if not 0 <= opts["seed"] < 2**63:
                raise ConfigError(f"seed={opts['seed']} is not valid: use an integer from 0 to 2**63 - 1")
            check_top_k(opts["top_k"], self.model.vocab_size)
            opts["stop"] = stop_strings(request.get("stop") or [])
            if len(opts["stop"]) > MAX_STOP or max(map(len, opts["stop"]), default=0) > MAX_STOP_CHARS:
                raise ConfigError(
                    f"stop holds {len(opts['stop'])} strings of up to {max(map(len, opts['stop']))} characters; "
                    f"at most {MAX_STOP} strings of {MAX_STOP_CHARS} characters each"
                )
        except ConfigError as e:
            raise RequestError(str(e)) from None
        if opts["max_new_tokens"] > self.limits.max_new_tokens:
            raise RequestError(
                f"max_new_tokens={opts['max_new_tokens']} is more than this server allows: "
                f"at most {self.limits.max_new_tokens} (max_new_tokens)"
            )
        return opts

    def check_prompt(self, prompt: Any) -> str:
        if not isinstance(prompt, str):
            raise RequestError("prompt is not a string")
        if len(prompt) > self.limits.max_text_chars:
            raise RequestError(
                f"prompt has {len(prompt)} characters; at most {self.limits.max_text_chars} (max_text_chars)",
                status=413,
            )
        try:
            self.tokenizer.encode(prompt)
        except DataError as e:
            raise RequestError(f"prompt: {e}") from None
        return prompt

    def generate(self, prompt: str, opts: dict, on_text: Callable[[str], None] | None = None) -> str:
        """The continuation of `prompt` (without it); `on_text` receives each new piece as it appears."""
        options = {k: v for k, v in opts.items() if k != "seed"}
        generator = torch.Generator(device=self.device).manual_seed(int(opts["seed"]))
        text = sample_text(
            self.model, self.tokenizer, prompt, generator=generator, device=self.device, on_text=on_text, **options
        )
        return text[len(prompt) :]

    def info(self) -> dict:
        return self._info


Backend = TextClassifier | ImageClassifier | TextGenerator


def load_backend(
    ckpt_path: str | None,
    model_path: str | None,
    device: torch.device,
    limits: Limits,
    threads: int | None = None,
    precision: str = "auto",
) -> Backend:
    """The served model, from a `bigmodel train` checkpoint (ckpt_path, on `device`) or a folder written by
    `bigmodel export` (model_path, on the CPU with `threads` onnxruntime threads); which kind of model it
    is follows from the data state saved with it. A classifier runs under `precision` (inference_dtype);
    a GPT samples in fp32."""
    if (ckpt_path is None) == (model_path is None):
        raise ConfigError(
            "give exactly one of ckpt_path=PATH (a checkpoint from bigmodel train) or "
            "model_path=DIR (a folder written by bigmodel export)"
        )
    if model_path is not None:
        from bigmodel.exported import load_exported

        loaded, device = from_exported(load_exported(model_path, threads=threads)), torch.device("cpu")
    else:
        assert ckpt_path is not None  # exactly one of the two is given (checked above)
        loaded = from_checkpoint(restore_model(ckpt_path, device))
    data, dtype = loaded.data, inference_dtype(loaded, precision)
    if "tokenizer" in data:
        return TextGenerator(loaded, device, limits)
    if "vocab" in data and "class_names" in data:
        return TextClassifier(loaded, device, limits, dtype)
    if {"class_names", "mean", "std", "image_size"} <= data.keys():
        return ImageClassifier(loaded, device, limits, dtype)
    raise checkpoint.CheckpointError(
        f"{ckpt_path or model_path!r}: its data state has none of a vocabulary, "
        "an image size or a tokenizer, so there is no way to feed it requests"
    )
