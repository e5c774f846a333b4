"""The training loop shared by every model: it decides when things happen; the Runtime knows how
(device, precision, processes, compile), the data module's metrics and the callbacks what a batch means.
Between log steps nothing is read back from the device (bigmodel.window), so the host runs ahead of a GPU.
"""

import logging
import math
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from functools import partial
from typing import Any

import torch
from tqdm import tqdm

from bigmodel import checkpoint, trainer_state
from bigmodel.config import TrainerConfig
from bigmodel.data import DataModule
from bigmodel.data.errors import DataError
from bigmodel.evaluation import batch_limit, evaluate_split
from bigmodel.loggers import Logger
from bigmodel.losses import ignore_index
from bigmodel.optim import check_monitor
from bigmodel.profiling import make_profiler
from bigmodel.runtime import GracefulStop, Runtime
from bigmodel.window import NonFiniteGuard, Throughput, Window

log = logging.getLogger("bigmodel")


class Trainer:
    """Fits `model` on `datamodule` with `optimizer` (and an optional scheduler factory
    `scheduler(optimizer, total_steps)`), calling `callbacks` (name -> object) along the way."""

    def __init__(
        self,
        config: TrainerConfig,
        *,
        model: torch.nn.Module,
        loss_fn: Callable,
        optimizer: torch.optim.Optimizer,
        datamodule: DataModule,
        logger: Logger,
        scheduler: Callable | None = None,
        callbacks: dict[str, Any] | None = None,
        checkpoint_extras: dict[str, Any] | None = None,
        output_dir: str = ".",
        runtime: Runtime | None = None,
    ) -> None:
        self.config, self.loss_fn, self.datamodule, self.logger = config, loss_fn, datamodule, logger
        self.callbacks, self.output_dir = dict(callbacks or {}), output_dir
        self.checkpoint_extras = dict(checkpoint_extras or {})
        self.runtime = runtime or Runtime(config).init()
        self.optimizer, self.metrics = optimizer, datamodule.metrics()
        self.model = self.runtime.setup(model, optimizer)
        self.window, self.throughput = Window(self.runtime), Throughput(self.runtime)
        self.global_step = self.epoch = self.batch_in_epoch = 0
        self.should_stop, self.last_val_step = False, -1
        self.last_metrics: dict[str, float] = {}
        self.interrupted = False  # a signal stopped the run (should_stop alone may be early stopping)
        self.guard = NonFiniteGuard(config.on_nonfinite, self.window, self.print)
        self.scheduler_factory, self.scheduler, self.total_steps = scheduler, None, 0

    # the runtime's, for callbacks
    device = property(lambda self: self.runtime.device)
    rank = property(lambda self: self.runtime.rank)
    world_size = property(lambda self: self.runtime.world_size)
    is_global_zero = property(lambda self: self.runtime.is_global_zero)
    scaler = property(lambda self: self.runtime.scaler)
    autocast = property(lambda self: self.runtime.autocast)

    def _train_loader(self, skip_batches: int = 0) -> Iterable:
        return self.datamodule.loader(
            "train",
            epoch=self.epoch,
            skip_batches=skip_batches,
            rank=self.rank,
            world_size=self.world_size,
            device=self.device,
        )

    def _batches_per_epoch(self) -> int:
        n = len(self._train_loader())  # type: ignore[arg-type]  # the data modules' loaders have a length
        return n if self.config.limit_train_batches < 0 else min(n, self.config.limit_train_batches)

    def _total_steps(self) -> int:
        if self.config.max_steps > 0:
            return self.config.max_steps
        return self.config.max_epochs * math.ceil(self._batches_per_epoch() / self.config.accumulate_grad_batches)

    def call(self, hook: str, *args) -> None:
        for cb in self.callbacks.values():
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(self, *args)

    def print(self, msg: str) -> None:
        if self.is_global_zero:
            log.info(msg)

    # ---------------------------------------------------------------- training
    def fit(self, ckpt_path: str | None = None) -> dict[str, float]:
        if self._batches_per_epoch() == 0:
            raise DataError("no training batches: the train split is empty or smaller than one batch (data.batch_size)")
        self.total_steps = self._total_steps()
        if self.scheduler_factory is not None:
            self.scheduler = self.scheduler_factory(self.optimizer, self.total_steps)
            check_monitor(self.scheduler, self.metric_names("val"))
        if ckpt_path:
            self.load_checkpoint(ckpt_path)
            trainer_state.check_steps_left(self, ckpt_path)
        self.model.train()
        counts = getattr(self.metrics, "train_counts", None)  # train/acc, counted inside the (compiled) step
        self.step_fn = self.runtime.train_step_fn(
            self.loss_fn, counts and partial(counts, ignore_index=ignore_index(self.loss_fn))
        )
        self.call("on_fit_start")
        self.profiler = make_profiler(self.config.profiler, self.output_dir)
        self.throughput.reset()
        self.throughput.resume()
        with GracefulStop(self._request_stop), self.profiler:
            while not self._done():
                if not self._train_epoch():  # stopped early
                    break
                if self.config.val_check_interval == 0 and self.last_val_step != self.global_step:
                    self.validate()
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            if not self.should_stop and self.last_val_step != self.global_step:
                self.validate()
        self.throughput.pause()
        self.guard.check(self.global_step + 1, self.epoch)  # no checkpoint of NaN weights at the end
        self.profiler.summary(self.print)
        self.call("on_fit_end")
        return self.last_metrics

    def _done(self) -> bool:
        return self.should_stop or self._limit_reached()

    def _limit_reached(self) -> bool:
        if self.config.max_steps > 0:
            return self.global_step >= self.config.max_steps
        return self.epoch >= self.config.max_epochs

    def _train_epoch(self) -> bool:
        """One pass over the train loader, from `batch_in_epoch`. False when stopped early."""
        accum, limit = self.config.accumulate_grad_batches, self._batches_per_epoch()
        bar = tqdm(
            total=limit,
            initial=self.batch_in_epoch,
            desc=f"epoch {self.epoch}",
            leave=False,
            dynamic_ncols=True,
            disable=not (self.config.progress_bar and self.is_global_zero and sys.stderr.isatty()),
        )
        step_loss, micro = None, 0
        batches = iter(self._train_loader(self.batch_in_epoch))
        while self.batch_in_epoch < limit:
            with self.profiler.phase("data"), self.throughput.waiting():
                batch = next(batches, None)
            if batch is None:
                break
            self.call("on_train_batch_start", batch)
            self.batch_in_epoch += 1
            micro += 1
            last_micro = micro == accum or self.batch_in_epoch == limit
            loss = self._micro_step(batch, accum, sync=last_micro)
            step_loss = loss if step_loss is None else step_loss + loss
            bar.update(1)
            if not last_micro:
                continue
            stepped = self._optimizer_step(step_loss / micro)
            step_loss, micro = None, 0
            if not stepped:
                continue
            logged = self.global_step % self.config.log_every_n_steps == 0
            if logged:
                self._log_train(bar)
            validated = self.config.val_check_interval > 0 and self.global_step % self.config.val_check_interval == 0
            if validated:
                self.validate()
            if (self.world_size == 1 or logged or validated) and self._agree_on_stop():
                bar.close()  # several processes agree on stopping only where they read anyway
                return False
            if self._limit_reached():
                bar.close()
                return self.batch_in_epoch >= limit
        bar.close()
        self._agree_on_stop()
        self.guard.check(self.global_step + 1, self.epoch)
        return True

    def _micro_step(self, batch, accum: int, sync: bool) -> torch.Tensor:
        args, targets = self.runtime.prepare(batch)
        with self.runtime.no_sync(sync):
            with self.profiler.phase("forward"), self.runtime.autocast():
                loss, hits = self.step_fn(args, targets)
            with self.profiler.phase("backward"):
                self.runtime.backward(loss, accum)
        self.window.add_counts(hits)
        self.throughput.add_batch(targets)
        return loss.detach().float()

    def _optimizer_step(self, loss: torch.Tensor) -> bool:
        """One optimizer step on the accumulated gradients; False when it was dropped (skip mode)."""
        with self.profiler.phase("optimizer"):
            grad_norm = self.runtime.clip(self.optimizer, self.config.gradient_clip_val)
            log_step = (self.global_step + 1) % self.config.log_every_n_steps == 0  # reads anyway: check first
            if self.guard.drop(loss, self.global_step + 1, self.epoch, check=log_step):
                self.optimizer.zero_grad(set_to_none=True)
                return False
            stepped = self.runtime.step(self.optimizer)
            if self.scheduler is not None and stepped and not hasattr(self.scheduler, "monitor"):
                self.scheduler.step()  # a scheduler with a monitor steps at validation instead
        self.global_step += 1
        self.throughput.steps += 1
        self.profiler.step()
        self.window.add_step(loss, grad_norm)
        self.call("on_train_batch_end", loss)
        return True

    def _agree_on_stop(self) -> bool:
        """should_stop on every process when set on any (a signal, a callback): they stop together."""
        self.should_stop = self.runtime.any_true(self.should_stop)
        if self.should_stop:
            self.interrupted = self.runtime.any_true(self.interrupted)
        return self.should_stop

    def _log_train(self, bar) -> None:
        metrics = self.window.read() | self.throughput.read()
        if self.is_global_zero:
            self.logger.log_metrics(metrics, self.global_step)
        bar.set_postfix(loss=f"{metrics['train/loss']:.4f}", sps=f"{metrics['perf/samples_per_sec']:.0f}")

    # ---------------------------------------------------------------- evaluation
    @contextmanager
    def eval_weights(self) -> Iterator[None]:
        """The weights evaluation uses: each callback's `eval_weights(trainer)` context (an average of
        the weights, callbacks.ema) holds for its duration; without one, the model's own."""
        with ExitStack() as stack:
            for cb in self.callbacks.values():
                if hasattr(cb, "eval_weights"):
                    stack.enter_context(cb.eval_weights(self))
            yield

    def evaluate(self, split: str = "val", eval_weights: bool = True) -> dict[str, float]:
        """Loss and metrics over `split`, reduced across processes; logged with the split's prefix.
        `eval_weights=False`: the model's weights as they are, even where a callback would swap in others."""
        with self.eval_weights() if eval_weights else nullcontext():
            return evaluate_split(
                self.runtime,
                self.runtime.wrapped,
                self.datamodule,
                split,
                self.loss_fn,
                self.metrics,
                batch_limit(self.config, split),
                self.logger,
                self.global_step,
            )

    def metric_names(self, split: str = "val") -> list[str]:
        """The names evaluate(split) logs, known before any evaluation (callbacks check theirs)."""
        self.metrics.reset()
        return [f"{split}/loss", *(f"{split}/{k}" for k in self.metrics.compute())]

    def validate(self) -> dict[str, float]:
        """Validation (and what hangs on it: checkpoints, samples), timed out of the perf/* scalars."""
        self.throughput.pause()
        self.guard.check(self.global_step + 1, self.epoch)  # never validate or checkpoint NaN weights
        metrics = self.evaluate("val")
        self.last_val_step, self.last_metrics = self.global_step, metrics
        scheduler: Any = self.scheduler
        if hasattr(scheduler, "monitor"):  # scheduler=plateau: before checkpoints save its state
            scheduler.step(metrics[scheduler.monitor])
        self.print(
            f"epoch {self.epoch} step {self.global_step}: " + "  ".join(f"{k}={v:.4f}" for k, v in metrics.items())
        )
        self.call("on_validation_end", metrics)
        self.throughput.resume()
        return metrics

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return trainer_state.state_dict(self)

    def save_checkpoint(self, path: str, eval_weights: bool = False) -> None:
        """`eval_weights`: the model entry holds the weights evaluation uses (best.pt with callbacks.ema)."""
        with self.eval_weights() if eval_weights else nullcontext():  # saved inside: the state holds views
            state = self.state_dict()  # every rank takes part (FSDP gathers shards here)
            if self.is_global_zero:
                checkpoint.save(state, path)  # a full disk: one line naming the file

    def load_checkpoint(self, path: str) -> None:
        trainer_state.load(self, path)
        self.print(f"resumed from {path} at epoch {self.epoch}, step {self.global_step}")

    def _request_stop(self, signal_name: str) -> None:
        self.print(f"received {signal_name}: finishing this step, then saving last.pt")
        self.should_stop = self.interrupted = True
