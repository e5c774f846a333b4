"""Data modules. Each one turns flat config args into loaders of `(inputs, targets)` batches.

A data module is any object with this shape (no base class to inherit):

    setup()                      read / prepare the data; idempotent
    model_args() -> dict         sizes the model needs from the data, e.g. {"num_classes": 10}
    loader(split, *, epoch=0, skip_batches=0, rank=0, world_size=1, device=None)
                                 an iterable of (inputs, targets); `split` is "train" | "val" | "test".
                                 `inputs` is a Tensor or a tuple of Tensors passed positionally to the model.
                                 Train order depends only on (seed, epoch); `skip_batches` resumes mid-epoch.
    metrics() -> Metrics         the metrics that fit this data (see bigmodel.metrics)
    state_dict() -> dict         what inference needs later (label names, vocabulary, tokenizer)

and optionally, for `init_from`:

    reuse_vocabulary(state) -> bool   before setup(): start from a checkpoint's saved vocabulary (its
                                      state_dict()), appending new tokens; False if it has none that fits
"""

from collections.abc import Iterable
from typing import Any, Protocol

import torch

from bigmodel.metrics import Metrics


class DataModule(Protocol):
    def setup(self) -> None: ...

    def model_args(self) -> dict[str, Any]: ...

    def loader(
        self,
        split: str,
        *,
        epoch: int = 0,
        skip_batches: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | None = None,
    ) -> Iterable[tuple[Any, torch.Tensor]]: ...

    def metrics(self) -> Metrics: ...

    def state_dict(self) -> dict[str, Any]: ...
