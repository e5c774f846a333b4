"""`bigmodel lr_find <train overrides>`: the learning-rate range test.

The model, data, loss and optimizer are built from the train config as `bigmodel train` builds
them, and the Trainer takes `lr_find.num_steps` optimizer steps while the learning rate grows
exponentially from `lr_find.min_lr` to `lr_find.max_lr` (the scheduler is replaced; nothing is
validated, checkpointed or resumed). The loss is smoothed with a bias-corrected exponential moving
average (`lr_find.beta`); the sweep stops early once the smoothed loss exceeds `lr_find.diverge`
times its minimum, or the loss is not finite.

Suggested optimizer.lr: the LR where the smoothed loss falls fastest, i.e. the most negative slope
of the smoothed loss against log(LR), looked for between the first `lr_find.skip_start` fraction
of the points and the minimum of the smoothed loss. With fewer than 5 points there, the minimum's
LR / 10 (not below min_lr). Written to the run folder: lr_find.csv (step, lr, loss, smoothed_loss), lr_find.png (with
matplotlib: pip install 'bigmodel[plot]'), and TensorBoard scalars lr_find/loss, lr_find/smoothed_loss
against the step, and lr_find/lr.
"""

import csv
import dataclasses
import logging
import math
from pathlib import Path
from typing import Annotated

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from bigmodel.config import ConfigError, NonFinite, check_keys, check_targets
from bigmodel.config import resolved as resolved_config
from bigmodel.optim import make_optimizer
from bigmodel.ranges import Fraction, PositiveFloat, Range
from bigmodel.runtime import Runtime
from bigmodel.train import build, build_logger, output_dir, seed_everything, trainer_config
from bigmodel.trainer import Trainer

log = logging.getLogger("bigmodel")


def suggest(lrs: list[float], smoothed: list[float], skip_start: float = 0.1) -> float:
    """The LR of the steepest descent of `smoothed` against log(lr), before its minimum; see the top."""
    low = min(range(len(smoothed)), key=smoothed.__getitem__)
    start = min(int(len(lrs) * skip_start), max(low - 1, 0))
    if low - start < 4:
        return max(lrs[low] / 10, lrs[0])  # inside the swept range
    slopes = [
        (smoothed[i + 1] - smoothed[i - 1]) / (math.log(lrs[i + 1]) - math.log(lrs[i - 1]))
        for i in range(start + 1, low)
    ]
    return lrs[start + 1 + min(range(len(slopes)), key=slopes.__getitem__)]


class LRSweep:
    """Trainer callback: records (lr, loss) after each step and stops the fit when the loss diverges."""

    def __init__(self, min_lr: float, max_lr: float, num_steps: int, beta: float, diverge: float) -> None:
        self.min_lr, self.ratio, self.num_steps = min_lr, max_lr / min_lr, num_steps
        self.beta, self.diverge = beta, diverge
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self.avg, self.diverged = 0.0, False

    def lr_at(self, step: int) -> float:
        """The LR of the optimizer step `step` (0-based): min_lr at the first, max_lr at the last."""
        return self.min_lr * self.ratio ** (step / max(self.num_steps - 1, 1))

    def scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] = self.min_lr
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self.lr_at(step) / self.min_lr)

    def on_train_batch_end(self, trainer, loss) -> None:
        loss, step = float(loss), len(self.losses)  # a read each step: the range test needs every loss
        self.avg = self.beta * self.avg + (1 - self.beta) * loss
        smoothed = self.avg / (1 - self.beta ** (step + 1))
        self.lrs.append(self.lr_at(step))
        self.losses.append(loss)
        self.smoothed.append(smoothed)
        trainer.logger.log_metrics(
            {"lr_find/loss": loss, "lr_find/smoothed_loss": smoothed, "lr_find/lr": self.lrs[-1]}, step
        )
        if step > 0 and (not math.isfinite(smoothed) or smoothed > self.diverge * min(self.smoothed)):
            self.diverged = trainer.should_stop = True
        if len(self.losses) >= self.num_steps:
            trainer.should_stop = True  # no final validation


@dataclasses.dataclass
class LrFindKeys:
    """The typed keys of lr_find: in configs/lr_find.yaml (checked by check_keys)."""

    min_lr: PositiveFloat = 1e-7
    max_lr: PositiveFloat = 10.0
    num_steps: Annotated[int, Range(ge=5)] = 100
    beta: Fraction = 0.9
    diverge: Annotated[float, Range(gt=1)] = 4.0
    skip_start: Fraction = 0.1


def check_options(opts: DictConfig) -> None:
    check_keys(opts, LrFindKeys, "lr_find.")  # each key's type and range
    if not opts.max_lr > opts.min_lr:  # the one rule between two keys
        raise ConfigError(f"lr_find.min_lr={opts.min_lr} and lr_find.max_lr={opts.max_lr}: need 0 < min_lr < max_lr")


def write_curve(folder: Path, sweep: LRSweep, suggestion: float) -> None:
    with open(folder / "lr_find.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "lr", "loss", "smoothed_loss"])
        writer.writerows(
            (i, f"{lr:.6g}", f"{loss:.6g}", f"{s:.6g}")
            for i, (lr, loss, s) in enumerate(zip(sweep.lrs, sweep.losses, sweep.smoothed))
        )
    try:
        import matplotlib
    except ImportError:
        log.info(
            "lr_find: no PNG (matplotlib is not installed: pip install 'bigmodel[plot]'); lr_find.csv "
            "and TensorBoard have the curve"
        )
        return
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # its font cache lines are noise
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(sweep.lrs, sweep.losses, alpha=0.3, label="loss")
    ax.plot(sweep.lrs, sweep.smoothed, label="smoothed loss")
    ax.axvline(suggestion, color="red", linestyle="--", label=f"suggested lr {suggestion:.3g}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss", title="LR range test")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "lr_find.png", dpi=100)
    plt.close(fig)


def lr_find(cfg: DictConfig) -> float:
    """Run the range test on the train config `cfg`; returns (and prints) the suggested optimizer.lr."""
    opts = cfg.lr_find
    check_options(opts)
    seed_everything(cfg.seed)
    resolved = resolved_config(cfg)
    config = dataclasses.replace(
        trainer_config(cfg),
        max_steps=opts.num_steps,
        val_check_interval=opts.num_steps + 1,
        on_nonfinite=NonFinite.stop,
    )
    check_targets(resolved)
    runtime = Runtime(config).init()  # as `bigmodel train`: one Runtime, shared with the Trainer
    datamodule, model, _, _ = build(cfg, resolved)  # as `bigmodel train` starts (init_from, vectors)
    optimizer = make_optimizer(
        instantiate(cfg.optimizer), model, cfg.optimizer.get("weight_decay", 0.0), runtime.device
    )
    sweep = LRSweep(opts.min_lr, opts.max_lr, opts.num_steps, opts.beta, opts.diverge)
    logger = build_logger(cfg, True)
    trainer = Trainer(
        config,
        model=model,
        loss_fn=instantiate(cfg.loss),
        optimizer=optimizer,
        scheduler=sweep.scheduler,
        datamodule=datamodule,
        logger=logger,
        callbacks={"lr_sweep": sweep},
        output_dir=output_dir(cfg),
        runtime=runtime,
    )
    try:
        trainer.fit()
    except FloatingPointError:  # a non-finite loss: the LR is far too high, which is what we look for
        sweep.diverged = True
    logger.close()
    if len(sweep.losses) < 2:
        raise ConfigError(
            f"lr_find: the loss diverged after {len(sweep.losses)} step(s) from "
            f"lr_find.min_lr={opts.min_lr}; lower lr_find.min_lr"
        )
    suggestion = suggest(sweep.lrs, sweep.smoothed, opts.skip_start)
    folder = Path(output_dir(cfg))
    write_curve(folder, sweep, suggestion)
    early = len(sweep.losses) < opts.num_steps
    stopped = f"stopped early at lr={sweep.lrs[-1]:.3g} (the loss diverged)" if early else "the full range"
    log.info(
        f"lr_find: {len(sweep.losses)} steps from lr={sweep.lrs[0]:.3g} to {sweep.lrs[-1]:.3g}, {stopped}; "
        f"curve in {folder}"
    )
    print(f"suggested optimizer.lr={suggestion:.3g}")
    return suggestion
