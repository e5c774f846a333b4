"""`bigmodel predict ckpt_path=... text="..."` (or `input_file=...`): classify text with a checkpoint
(or with a folder written by `bigmodel export`: model_path=...).

The model's config and weights, the vocabulary and the label names all come from the checkpoint,
so text is encoded exactly as in training. Each text prints as one line on stdout,
`label<TAB>name=prob ...<TAB>text`, or goes to a CSV with `output_file=...`.
"""

import csv
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig

from bigmodel.config import Device, PredictConfig, TrainerConfig, check_ranges
from bigmodel.data.errors import DataError
from bigmodel.data.text import pad_batch
from bigmodel.data.text_files import read_text
from bigmodel.data.vocab import Vocab
from bigmodel.export import one_source
from bigmodel.exported import Exported, ExportError, load_exported
from bigmodel.restore import restore_model
from bigmodel.runtime import Runtime

log = logging.getLogger("bigmodel")


def load_classifier(ckpt_path: str, device: torch.device) -> tuple[torch.nn.Module, Vocab, list[str]]:
    """(model in eval mode on device, vocabulary, class names) from a `bigmodel train` checkpoint."""
    line = (
        f"ckpt_path={ckpt_path!r} has no vocabulary: not a text classification checkpoint "
        "(train one with e.g. model=lstm data=sst2)"
    )
    restored = restore_model(ckpt_path, device, needs={"vocab": line, "class_names": line})
    return restored.model, Vocab.from_state(restored.data["vocab"]), list(restored.data["class_names"])


def load_exported_classifier(model_path: str) -> tuple[Exported, Vocab, list[str]]:
    """(exported model, vocabulary, class names) of a folder written by `bigmodel export`."""
    exported = load_exported(model_path)
    if exported.task != "text_classification":
        raise ExportError(f"model_path={model_path!r} holds a {exported.task} model, not a text classifier")
    return exported, exported.vocab, exported.class_names


@torch.no_grad()
def classify(
    model: Callable[..., torch.Tensor],
    vocab: Vocab,
    texts: list[str],
    *,
    batch_size: int = 256,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Class probabilities (N, C) of `texts`, in their order (padding does not change them)."""
    device = device or torch.device("cpu")
    probs = []
    for start in range(0, len(texts), batch_size):
        items = [(torch.tensor(vocab.encode(t), dtype=torch.long), 0) for t in texts[start : start + batch_size]]
        (tokens, lengths), _ = pad_batch(items, vocab.pad_idx)
        probs.append(model(tokens.to(device), lengths.to(device)).float().softmax(-1).cpu())
    return torch.cat(probs) if probs else torch.zeros(0, 0)


def read_texts(path: str, encoding: str) -> list[str]:
    """One text a line ("\\n" only), blank lines skipped."""
    if not Path(path).exists():
        raise DataError(f"input_file={path!r}: no such file")
    lines = (line.rstrip("\r") for line in read_text(Path(path), encoding, key="encoding").split("\n"))
    texts = [line for line in lines if line.strip()]
    if not texts:
        raise DataError(f"input_file={path!r} holds no text: give one text a line")
    return texts


def warn_unknown(vocab: Vocab, texts: list[str], show: int = 10) -> int:
    """Warn for each text with no word in the vocabulary: its label is the model's guess from nothing.
    Returns how many there are."""
    unknown = [i for i, t in enumerate(texts) if all(j == vocab.unk_idx for j in vocab.encode(t))]
    for i in unknown[:show]:
        log.warning(
            f"text {i + 1} ({texts[i][:60]!r}): none of its words is in the model's vocabulary (all "
            "<unk>), so its label says nothing about the text"
        )
    if len(unknown) > show:
        log.warning(f"... and {len(unknown) - show} more texts of unknown words only")
    return len(unknown)


def check_output_file(cfg: DictConfig) -> None:
    """output_file is a file to (re)write, and not one of the command's inputs (the texts, the model)."""
    out = Path(cfg.output_file).expanduser().resolve()
    if out.is_dir():
        raise DataError(f"output_file={cfg.output_file!r} is a folder; give a file name, e.g. predictions.csv")
    for key in ("input_file", "ckpt_path", "model_path"):
        given = cfg.get(key)
        source = Path(given).expanduser().resolve() if given else None
        if source is not None and (out == source or source in out.parents):
            raise DataError(f"output_file={cfg.output_file!r} would overwrite {key}={given!r}; write elsewhere")


def predict(cfg: DictConfig) -> list[tuple[str, list[float]]]:
    """Classify `text` or the lines of `input_file`; returns (label, probabilities) per text."""
    one_source(cfg, 'bigmodel predict ckpt_path=logs/<name>/runs/<run>/checkpoints/best.pt text="..."')
    check_ranges(cfg, PredictConfig)
    if (cfg.text is None) == (cfg.input_file is None):
        raise DataError('give exactly one of text="..." or input_file=PATH')
    if cfg.output_file:
        check_output_file(cfg)  # before the model is loaded
    model: Callable[..., torch.Tensor]
    if cfg.model_path is not None:  # an exported folder: runs on the CPU (onnxruntime / torch.export)
        model, vocab, names, device = *load_exported_classifier(cfg.model_path), torch.device("cpu")
    else:
        device = Runtime(TrainerConfig(device=Device(cfg.device)), device_key="device").init().device
        model, vocab, names = load_classifier(cfg.ckpt_path, device)
    if cfg.text is not None and not str(cfg.text).strip():
        raise DataError('text= is empty: give the text to classify, e.g. text="a gripping , funny film"')
    texts = [str(cfg.text)] if cfg.text is not None else read_texts(cfg.input_file, cfg.encoding)
    warn_unknown(vocab, texts)
    probs = classify(model, vocab, texts, batch_size=int(cfg.batch_size), device=device)
    labels = [names[i] for i in probs.argmax(-1).tolist()] if len(texts) else []
    if cfg.output_file:
        Path(cfg.output_file).expanduser().parent.mkdir(parents=True, exist_ok=True)
        with open(Path(cfg.output_file).expanduser(), "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label", *[f"p_{n}" for n in names]])
            for text, label, p in zip(texts, labels, probs.tolist()):
                writer.writerow([text, label, *[f"{v:.4f}" for v in p]])
        print(f"{len(texts)} predictions written to {cfg.output_file}", flush=True)
    else:
        for text, label, p in zip(texts, labels, probs.tolist()):
            print(f"{label}\t" + " ".join(f"{n}={v:.4f}" for n, v in zip(names, p)) + f"\t{text}", flush=True)
    return list(zip(labels, probs.tolist()))
