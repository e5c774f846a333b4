"""A callback that shows what the model is fed: the first training batch's images as one grid."""

from typing import Any

import torch

from bigmodel.ranges import PositiveInt
from bigmodel.runtime import as_args


def input_grid(inputs: Any, count: int = 16, nrow: int = 8) -> torch.Tensor | None:
    """The first `count` images of a (B, 1 or 3, H, W) batch as one (3, H', W') grid, each image
    scaled to [0, 1] on its own; None for inputs that are not images (tokens, other channel counts)."""
    x = as_args(inputs)[0]
    if not (isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[1] in (1, 3)):
        return None
    from torchvision.utils import make_grid

    return make_grid(x[:count].detach().float().cpu(), nrow=nrow, normalize=True, scale_each=True)


class InputImages:
    """Logs the run's first training batch (as augmented and normalized) as image `train/inputs`
    at step 0, on rank 0; batches of other inputs are skipped, so it can sit in the default callbacks."""

    def __init__(self, count: PositiveInt = 16, nrow: PositiveInt = 8) -> None:
        self.count, self.nrow = count, nrow

    def on_train_batch_start(self, trainer, batch) -> None:
        if trainer.global_step != 0 or trainer.batch_in_epoch != 0 or not trainer.is_global_zero:
            return
        grid = input_grid(batch[0], self.count, self.nrow)
        if grid is not None:
            trainer.logger.log_image("train/inputs", grid, 0)
