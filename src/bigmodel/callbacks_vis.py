"""What a classifier gets right and wrong, shown after each validation (TensorBoard's Images and Text tabs).

`Predictions` takes the first validation examples through the model (with the evaluation weights)
and logs, for image classifiers, a grid of them titled with predicted and true class
(`val/predictions`); for text classifiers, a few misclassified examples with their true and
predicted labels and the model's confidence (`val/misclassified`). Language models and other
tasks are skipped, so it can sit in the default callbacks.

`WordVectors` puts a text classifier's word embeddings in TensorBoard's Projector tab at the end
of training, each point labelled with its word.
"""

from itertools import islice

import torch

from bigmodel.distributed import is_sharded
from bigmodel.ranges import PositiveInt
from bigmodel.runtime import as_args, to_device


class Predictions:
    """After every `every_n_evals`-th validation: `images` sample predictions as a grid, or up to
    `examples` misclassified texts found in the first `max_batches` validation batches."""

    def __init__(
        self,
        images: PositiveInt = 16,
        examples: PositiveInt = 8,
        max_batches: PositiveInt = 20,
        every_n_evals: PositiveInt = 1,
        max_chars: PositiveInt = 300,
    ) -> None:
        self.images, self.examples, self.max_batches = images, examples, max_batches
        self.every_n_evals, self.max_chars = every_n_evals, max_chars
        self.evals = 0

    def on_validation_end(self, trainer, metrics: dict[str, float]) -> None:
        self.evals += 1
        if (self.evals - 1) % self.every_n_evals or not trainer.is_global_zero or is_sharded(trainer.model):
            return  # rank 0 alone runs the model; a sharded one needs every process in each forward
        class_names = getattr(trainer.datamodule, "class_names", None)
        if not class_names:
            return  # not a classifier
        loader = trainer.datamodule.loader("val", device=trainer.device)
        with torch.no_grad(), trainer.eval_weights():
            was_training = trainer.model.training
            trainer.model.eval()
            try:
                if hasattr(trainer.datamodule, "vocab"):
                    self._misclassified(trainer, loader, class_names)
                else:
                    self._grid(trainer, loader, class_names)
            finally:
                trainer.model.train(was_training)

    def _predict(self, trainer, batch) -> tuple[tuple, torch.Tensor, torch.Tensor]:
        inputs, targets = to_device(batch, trainer.device)
        args = as_args(inputs)
        with trainer.autocast():
            logits = trainer.model(*args)
        return args, targets, logits.float().softmax(-1)

    def _grid(self, trainer, loader, class_names: list[str]) -> None:
        from bigmodel.figures import prediction_grid

        batch = next(iter(loader), None)
        if batch is None:
            return
        args, targets, probs = self._predict(trainer, batch)
        x = args[0][: self.images].detach().float().cpu()
        if x.dim() != 4 or x.shape[1] not in (1, 3) or targets.dim() != 1:
            return  # not images with one label each
        dm = trainer.datamodule
        if hasattr(dm, "mean") and hasattr(dm, "std"):  # undo the normalization: pixels in [0, 1]
            x = x * torch.as_tensor(dm.std).view(1, -1, 1, 1) + torch.as_tensor(dm.mean).view(1, -1, 1, 1)
        else:
            lo, hi = x.amin((1, 2, 3), keepdim=True), x.amax((1, 2, 3), keepdim=True)
            x = (x - lo) / (hi - lo).clamp(min=1e-8)
        true = [class_names[i] for i in targets[: self.images].tolist()]
        pred = [class_names[i] for i in probs[: self.images].argmax(-1).tolist()]
        trainer.logger.log_image("val/predictions", prediction_grid(x, true, pred), trainer.global_step)

    def _misclassified(self, trainer, loader, class_names: list[str]) -> None:
        found: list[str] = []
        vocab, seen, wrong = trainer.datamodule.vocab, 0, 0
        for batch in islice(loader, self.max_batches):
            args, targets, probs = self._predict(trainer, batch)
            if targets.dim() != 1:
                return  # token-level labels: not one label per text
            conf, preds = probs.max(-1)
            for ids, t, p, c in zip(args[0].tolist(), targets.tolist(), preds.tolist(), conf.tolist()):
                seen, wrong = seen + 1, wrong + (t != p)
                if t != p and len(found) < self.examples:
                    text = " ".join(vocab.decode(i for i in ids if i != vocab.pad_idx))
                    text = text if len(text) <= self.max_chars else text[: self.max_chars - 1] + "…"
                    found.append(
                        f"{len(found) + 1}. true {class_names[t]}, predicted {class_names[p]} "
                        f"(confidence {c:.2f})\n   {text}"
                    )
            if len(found) >= self.examples:
                break
        head = (
            f"step {trainer.global_step}: {wrong} of the first {seen} validation examples are misclassified; "
            f"{'the first ' if len(found) < wrong else ''}{len(found)} of them:"
        )
        trainer.logger.log_text("val/misclassified", "\n".join([head, "", *found]), trainer.global_step)

    def state_dict(self) -> dict:
        return {"evals": self.evals}

    def load_state_dict(self, state: dict) -> None:
        self.evals = state["evals"]


class WordVectors:
    """At the end of training, the embedding rows of the `max_words` most frequent words (the
    vocabulary is in frequency order) with the words as labels: tag `word_vectors`."""

    def __init__(self, max_words: PositiveInt = 5000) -> None:
        self.max_words = max_words

    def on_fit_end(self, trainer) -> None:
        vocab = getattr(trainer.datamodule, "vocab", None)
        if vocab is None or not trainer.is_global_zero or is_sharded(trainer.model):
            return  # not a text classifier with a vocabulary
        embedding = next((m for m in trainer.model.modules() if isinstance(m, torch.nn.Embedding)), None)
        if embedding is None or embedding.weight.shape[0] != len(vocab):
            return  # no embedding table with one row per word
        n = min(self.max_words, len(vocab))
        with trainer.eval_weights():
            vectors = embedding.weight[:n].detach().float().cpu().clone()
        trainer.logger.log_embedding("word_vectors", vectors, vocab.itos[:n], trainer.global_step)
