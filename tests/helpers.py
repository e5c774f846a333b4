"""Small builders shared by the trainer tests: a tiny model + data + Trainer, and a recording logger."""

from functools import partial

import torch

from bigmodel.callbacks_inputs import InputImages
from bigmodel.config import Device, TrainerConfig
from bigmodel.losses import CrossEntropy
from bigmodel.models.cnn import CNN
from bigmodel.optim import cosine, param_groups
from bigmodel.trainer import Trainer
from conftest import tiny_image_data


class RecordingLogger:
    """Keeps every logged scalar as (step, name, value)."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, str, float]] = []
        self.images: list[str] = []
        self.hparams: list[tuple[dict, dict]] = []

    def log_metrics(self, metrics, step):
        self.rows += [(step, k, v) for k, v in metrics.items()]

    def log_hparams(self, hparams, metrics, shown):
        self.hparams.append((hparams, metrics))

    def log_image(self, tag, image, step):
        self.images.append(tag)

    def log_text(self, tag, text, step):
        pass

    def log_pr_curve(self, tag, tp, fp, tn, fn, step):
        pass

    def log_embedding(self, tag, vectors, labels, step):
        pass

    def close(self):
        pass

    def curve(self, name: str) -> list[tuple[int, float]]:
        return [(s, v) for s, k, v in self.rows if k == name]


class StopAt:
    """Sets trainer.should_stop at a given step, as SIGINT/SIGTERM do."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, loss):
        if trainer.global_step == self.step:
            trainer.should_stop = True


def make_trainer(
    *,
    callbacks=None,
    model_seed: int = 0,
    batch_size: int = 8,
    n: int = 64,
    bn: bool = True,
    lr: float = 0.05,
    augment: bool = True,
    **config,
) -> Trainer:
    dm = tiny_image_data(n=n, batch_size=batch_size, augment=augment)
    dm.setup()
    torch.manual_seed(model_seed)
    if bn:
        model = CNN(num_classes=4, in_channels=3, stem_width=4, widths=(8,), dropout=0.2)
    else:  # no BatchNorm: per-batch statistics would make batch-size comparisons inexact
        model = torch.nn.Sequential(
            torch.nn.Flatten(),
            torch.nn.Linear(8 * 8 * 3, 16),
            torch.nn.Tanh(),
            torch.nn.Dropout(0.0),
            torch.nn.Linear(16, 4),
        )
    optimizer = torch.optim.SGD(param_groups(model, 1e-4), lr=lr, momentum=0.9)
    cfg = TrainerConfig(**{"device": Device.cpu, "progress_bar": False, "log_every_n_steps": 1, **config})
    callbacks = {"input_images": InputImages(), **(callbacks or {})}  # as configs/callbacks/default.yaml
    return Trainer(
        cfg,
        model=model,
        loss_fn=CrossEntropy(),
        optimizer=optimizer,
        scheduler=partial(cosine, warmup_steps=2),
        datamodule=dm,
        logger=RecordingLogger(),
        callbacks=callbacks,
    )


def ddp_worker(rank: int, world_size: int, port: int, out_dir: str, config: dict) -> None:
    """One process of a Gloo group (torch.multiprocessing.spawn): fit a tiny trainer, save what it ends with."""
    import os

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    trainer = make_trainer(**config)
    trainer.fit()
    torch.save(
        {"model": trainer.model.state_dict(), "rows": trainer.logger.rows, "world_size": trainer.world_size},
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
