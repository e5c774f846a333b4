"""The training loop shared by every model.

Batches are `(inputs, targets)`, models return logits, the loss is a component. The Trainer owns
device placement, mixed precision, gradient accumulation and clipping, evaluation, logging,
checkpoint state and clean stops; everything else (callbacks, loggers, data) is handed to it.
"""

import logging
import math
import os
import sys
import time
from contextlib import ExitStack, contextmanager, nullcontext
from typing import Any, Callable, Iterable, Iterator

import torch
from tqdm import tqdm

from bigmodel import checkpoint, distributed
from bigmodel.config import ConfigError, NonFinite, Precision, TrainerConfig
from bigmodel.data.errors import DataError
from bigmodel.optim import check_monitor
from bigmodel.profiling import make_profiler
from bigmodel.runtime import GracefulStop, as_args, resolve_device, to_device

log = logging.getLogger("bigmodel")
MAX_SKIPS_IN_A_ROW = 25  # on_nonfinite=skip gives up after this many: the run cannot recover


class Trainer:
    """Fits `model` on `datamodule` with `optimizer` (and an optional scheduler factory
    `scheduler(optimizer, total_steps)`), calling `callbacks` (name -> object) along the way."""

    def __init__(self, config: TrainerConfig, *, model: torch.nn.Module, loss_fn: Callable,
                 optimizer: torch.optim.Optimizer | None, datamodule, logger, seed: int = 0,
                 scheduler: Callable | None = None, callbacks: dict[str, Any] | None = None,
                 checkpoint_extras: dict[str, Any] | None = None, output_dir: str = ".") -> None:
        self.config, self.loss_fn, self.datamodule, self.logger = config, loss_fn, datamodule, logger
        self.seed, self.callbacks, self.output_dir = seed, dict(callbacks or {}), output_dir
        self.checkpoint_extras = dict(checkpoint_extras or {})
        self.rank, self.world_size, local_rank = distributed.info()
        self.device = resolve_device(config.device, local_rank)
        if config.num_threads > 0:
            torch.set_num_threads(config.num_threads)
        self.is_global_zero = self.rank == 0
        self._configure_determinism()

        self.model = model.to(self.device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = optimizer
        self.forward_model = distributed.wrap(self.model, config.strategy, self.device, self.optimizer)
        if config.compile:
            self.forward_model = torch.compile(self.forward_model)
        self.autocast_dtype = {Precision.bf16: torch.bfloat16, Precision.fp16: torch.float16}.get(config.precision)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == Precision.fp16)
        self.metrics = datamodule.metrics()

        self.global_step = self.epoch = self.batch_in_epoch = 0
        self.window = {"loss": 0.0, "correct": 0.0, "count": 0.0, "micro": 0}  # since the last log line
        self.should_stop, self.last_val_step, self.last_metrics = False, -1, {}
        self.interrupted = False  # a signal stopped the run (should_stop alone may be early stopping)
        self.skipped_in_a_row = 0  # optimizer steps dropped for a non-finite loss (on_nonfinite=skip)
        self.scheduler_factory, self.scheduler, self.total_steps = scheduler, None, 0

    # ---------------------------------------------------------------- set-up helpers
    def _configure_determinism(self) -> None:
        torch.backends.cudnn.benchmark = not self.config.deterministic
        if self.config.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # set either way: a sweep runs its jobs in one process, and one job's choice must not leak
        torch.use_deterministic_algorithms(self.config.deterministic, warn_only=True)

    def _train_loader(self, skip_batches: int = 0) -> Iterable:
        return self.datamodule.loader("train", epoch=self.epoch, skip_batches=skip_batches, rank=self.rank,
                                      world_size=self.world_size, device=self.device)

    def _batches_per_epoch(self) -> int:
        n = len(self._train_loader())
        return n if self.config.limit_train_batches < 0 else min(n, self.config.limit_train_batches)

    def _total_steps(self) -> int:
        if self.config.max_steps > 0:
            return self.config.max_steps
        return self.config.max_epochs * math.ceil(self._batches_per_epoch() / self.config.accumulate_grad_batches)

    def autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def call(self, hook: str, *args) -> None:
        for cb in self.callbacks.values():
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(self, *args)

    def print(self, msg: str) -> None:
        if self.is_global_zero:
            log.info(msg)

    def _prepare(self, batch) -> tuple[tuple, torch.Tensor]:
        inputs, targets = to_device(batch, self.device)
        args = as_args(inputs)
        if self.config.channels_last and args[0].dim() == 4:
            args = (args[0].contiguous(memory_format=torch.channels_last),) + args[1:]
        return args, targets

    # ---------------------------------------------------------------- training
    def fit(self, ckpt_path: str | None = None) -> dict[str, float]:
        if self._batches_per_epoch() == 0:
            raise DataError("no training batches: the train split is empty or smaller than one batch "
                            "(data.batch_size)")
        self.total_steps = self._total_steps()
        if self.scheduler_factory is not None:
            self.scheduler = self.scheduler_factory(self.optimizer, self.total_steps)
            check_monitor(self.scheduler, self.metric_names("val"))
        if ckpt_path:
            self.load_checkpoint(ckpt_path)
            self._check_steps_left(ckpt_path)
        self.model.train()
        self.call("on_fit_start")
        self.profiler = make_profiler(self.config.profiler, self.output_dir)
        self._t_last, self._samples = time.perf_counter(), 0
        with GracefulStop(self._request_stop), self.profiler:
            while not self._done():
                if not self._train_epoch():  # stopped early
                    break
                if self.config.val_check_interval == 0 and self.last_val_step != self.global_step:
                    self.validate()
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            if not self.should_stop and self.last_val_step != self.global_step:
                self.validate()
        self.profiler.summary(self.print)
        self.call("on_fit_end")
        return self.last_metrics

    def _check_steps_left(self, ckpt_path: str) -> None:
        """Resuming a run that already reached its limit would train nothing and exit as if it had."""
        if self._done():
            key = "max_steps" if self.config.max_steps > 0 else "max_epochs"
            raise ConfigError(f"ckpt_path={ckpt_path!r} is at epoch {self.epoch}, step {self.global_step}: "
                              f"trainer.{key}={getattr(self.config, key)} is reached, nothing to train; "
                              f"raise trainer.{key} to train on")

    def _done(self) -> bool:
        if self.should_stop:
            return True
        if self.config.max_steps > 0:
            return self.global_step >= self.config.max_steps
        return self.epoch >= self.config.max_epochs

    def _train_epoch(self) -> bool:
        """One pass over the train loader, from `batch_in_epoch`. False when stopped early."""
        accum, limit = self.config.accumulate_grad_batches, self._batches_per_epoch()
        loader = self._train_loader(self.batch_in_epoch)
        bar = tqdm(total=limit, initial=self.batch_in_epoch, desc=f"epoch {self.epoch}", leave=False,
                   dynamic_ncols=True, disable=not (self.config.progress_bar and self.is_global_zero
                                                    and sys.stderr.isatty()))
        step_loss, micro = torch.zeros((), device=self.device), 0
        batches = iter(loader)
        while self.batch_in_epoch < limit:
            with self.profiler.phase("data"):
                batch = next(batches, None)
            if batch is None:
                break
            self.call("on_train_batch_start", batch)
            if self.global_step == 0 and self.batch_in_epoch == 0:
                self._log_inputs(batch[0])
            self.batch_in_epoch += 1
            micro += 1
            last_micro = micro == accum or self.batch_in_epoch == limit
            step_loss += self._micro_step(batch, accum, sync=last_micro)
            bar.update(1)
            if not last_micro:
                continue
            self._optimizer_step(distributed.mean(step_loss / micro))  # every process: the same loss
            step_loss, micro = torch.zeros((), device=self.device), 0
            if self.global_step % self.config.log_every_n_steps == 0:
                self._log_train(bar)
            if self.config.val_check_interval > 0 and self.global_step % self.config.val_check_interval == 0:
                self.validate()
            self.should_stop = distributed.any_true(self.should_stop, self.device)  # stop together
            if self.should_stop:
                self.interrupted = distributed.any_true(self.interrupted, self.device)
            if self.should_stop or self._done():
                bar.close()
                return self.batch_in_epoch >= limit and not self.should_stop
        bar.close()
        return True

    def _micro_step(self, batch, accum: int, sync: bool) -> torch.Tensor:
        args, targets = self._prepare(batch)
        no_sync = getattr(self.forward_model, "no_sync", None)
        with nullcontext() if (sync or no_sync is None) else no_sync():
            with self.profiler.phase("forward"), self.autocast():
                logits = self.forward_model(*args)
                loss = self.loss_fn(logits, targets)
            with self.profiler.phase("backward"):
                self.scaler.scale(loss / accum).backward()
        with torch.no_grad():
            keep = targets != -100
            self.window["correct"] += ((logits.argmax(-1) == targets) & keep).sum()  # no mask indexing: no sync
            self.window["count"] += keep.sum()
            self._samples += targets.shape[0]
        return loss.detach().float()

    def _optimizer_step(self, loss: torch.Tensor) -> None:
        with self.profiler.phase("optimizer"):
            grad_norm = None
            if self.config.gradient_clip_val > 0:
                self.scaler.unscale_(self.optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.gradient_clip_val)
            if not torch.isfinite(loss):
                self.optimizer.zero_grad(set_to_none=True)
                if self.config.on_nonfinite == NonFinite.stop:
                    raise FloatingPointError(
                        f"non-finite loss {loss.item()} at step {self.global_step + 1} (epoch {self.epoch}); "
                        "set trainer.on_nonfinite=skip to drop such steps, or lower optimizer.lr")
                self.skipped_in_a_row += 1
                self.print(f"skipping step {self.global_step + 1}: non-finite loss {loss.item()}")
                if self.skipped_in_a_row >= MAX_SKIPS_IN_A_ROW:
                    raise FloatingPointError(f"{self.skipped_in_a_row} steps in a row had a non-finite loss (last "
                                             f"at step {self.global_step + 1}): the weights or the data hold "
                                             "NaN/inf; lower optimizer.lr or check the data")
                if self.scaler.is_enabled():  # forget this step's inf checks; back off the scale
                    self.scaler.update(self.scaler.get_scale() * 0.5)
                return
            self.skipped_in_a_row = 0
            scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            overflowed = scale is not None and self.scaler.get_scale() < scale  # fp16: the step was skipped
            if self.scheduler is not None and not overflowed and not hasattr(self.scheduler, "monitor"):
                self.scheduler.step()  # a scheduler with a monitor steps at validation instead
        self.global_step += 1
        self.profiler.step()
        self.window["loss"] += loss
        self.window["micro"] += 1
        if grad_norm is not None:
            self.window["grad_norm"] = grad_norm
        self.call("on_train_batch_end", float(loss))

    def _log_train(self, bar) -> None:
        w = self.window
        hits = torch.tensor([float(w["correct"]), float(w["count"])], dtype=torch.float64, device=self.device)
        distributed.all_reduce_sum([hits], self.device)  # accuracy over every process's samples
        now = time.perf_counter()
        metrics = {"train/loss": float(w["loss"]) / max(w["micro"], 1),
                   "train/acc": float(hits[0]) / max(float(hits[1]), 1.0),
                   "perf/samples_per_sec": self._samples * self.world_size / max(now - self._t_last, 1e-9)}
        if "grad_norm" in w:
            metrics["train/grad_norm"] = float(w["grad_norm"])
        if self.is_global_zero:
            self.logger.log_metrics(metrics, self.global_step)
        bar.set_postfix(loss=f"{metrics['train/loss']:.4f}", sps=f"{metrics['perf/samples_per_sec']:.0f}")
        self.window = {"loss": 0.0, "correct": 0.0, "count": 0.0, "micro": 0}
        self._t_last, self._samples = now, 0

    def _log_inputs(self, inputs) -> None:
        x = as_args(inputs)[0]
        if self.is_global_zero and isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[1] in (1, 3):
            from torchvision.utils import make_grid

            grid = make_grid(x[:16].detach().float().cpu(), nrow=8, normalize=True, scale_each=True)
            self.logger.log_image("train/inputs", grid, 0)

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

    @torch.no_grad()
    def evaluate(self, split: str = "val", eval_weights: bool = True) -> dict[str, float]:
        """Loss and metrics over `split`, reduced across processes; logged with the split's prefix.
        `eval_weights=False`: the model's weights as they are, even where a callback would swap in others."""
        limit = self.config.limit_val_batches if split == "val" else self.config.limit_test_batches
        was_training = self.model.training
        self.model.eval()
        self.metrics.reset()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        count = torch.zeros((), dtype=torch.float64, device=self.device)
        loader = self.datamodule.loader(split, rank=self.rank, world_size=self.world_size, device=self.device)
        with self.eval_weights() if eval_weights else nullcontext():
            for i, batch in enumerate(loader):
                if 0 <= limit <= i:
                    break
                args, targets = self._prepare(batch)
                with self.autocast():
                    logits = self.forward_model(*args)
                    loss = self.loss_fn(logits, targets)
                n = (targets != -100).sum()
                loss_sum += loss.double() * n
                count += n
                self.metrics.update(logits.float(), targets)
        distributed.all_reduce_sum([loss_sum, count, *self.metrics.state()], self.device)
        self.model.train(was_training)
        if count.item() == 0:  # never report a loss and metrics of nothing as if measured
            raise DataError(f"the {split} split has no examples to evaluate")
        metrics = {f"{split}/loss": (loss_sum / count.clamp(min=1)).item()}
        metrics |= {f"{split}/{k}": v for k, v in self.metrics.compute().items()}
        if self.is_global_zero:
            self.logger.log_metrics(metrics, self.global_step)
            self.metrics.report(self.logger, split, self.global_step)
        return metrics

    def metric_names(self, split: str = "val") -> list[str]:
        """The names evaluate(split) logs, known before any evaluation (callbacks check theirs)."""
        self.metrics.reset()
        return [f"{split}/loss", *(f"{split}/{k}" for k in self.metrics.compute())]

    def validate(self) -> dict[str, float]:
        metrics = self.evaluate("val")
        self.last_val_step, self.last_metrics = self.global_step, metrics
        if hasattr(self.scheduler, "monitor"):  # scheduler=plateau: before checkpoints save its state
            self.scheduler.step(metrics[self.scheduler.monitor])
        self.print(f"epoch {self.epoch} step {self.global_step}: "
                   + "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        self.call("on_validation_end", metrics)
        return metrics

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values only: checkpoints are loaded with weights_only=True."""
        callbacks = {name: cb.state_dict() for name, cb in self.callbacks.items() if hasattr(cb, "state_dict")}
        state = {
            "format": checkpoint.FORMAT_VERSION,
            "model": distributed.model_state_dict(self.model),  # full, also under FSDP
            "optimizer": distributed.optimizer_state_dict(self.model, self.optimizer) if self.optimizer else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scaler": self.scaler.state_dict(),
            "progress": {"global_step": self.global_step, "epoch": self.epoch,
                         "batch_in_epoch": self.batch_in_epoch, "last_val_step": self.last_val_step,
                         "window": {k: float(v) for k, v in self.window.items()}},
            "callbacks": checkpoint.plain(callbacks),
            "rng": checkpoint.rng_state(),
            **checkpoint.plain(self.checkpoint_extras),  # the resolved config holds enum members
        }
        checkpoint.check_plain(state)  # on every rank, before anything is written
        return state

    def save_checkpoint(self, path: str, eval_weights: bool = False) -> None:
        """`eval_weights`: the model entry holds the weights evaluation uses (best.pt with callbacks.ema)."""
        with self.eval_weights() if eval_weights else nullcontext():  # saved inside: the state holds views
            state = self.state_dict()  # every rank takes part (FSDP gathers shards here)
            if self.is_global_zero:
                checkpoint.save(state, path)  # a full disk: one line naming the file

    def load_checkpoint(self, path: str) -> None:
        ckpt = checkpoint.load(path)
        checkpoint.check_resumable(ckpt, checkpoint.plain(self.checkpoint_extras.get("config")), path)
        checkpoint.load_model_state(self.model, ckpt["model"], path)
        try:
            distributed.load_optimizer_state_dict(self.model, self.optimizer, ckpt["optimizer"])
        except (ValueError, KeyError) as e:
            raise checkpoint.CheckpointError(f"checkpoint {path!r}: optimizer state does not fit "
                                             f"optimizer={type(self.optimizer).__name__} ({e})") from None
        if self.scheduler is not None and ckpt["scheduler"] is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        p = ckpt["progress"]
        self.global_step, self.epoch, self.batch_in_epoch = p["global_step"], p["epoch"], p["batch_in_epoch"]
        self.last_val_step, self.window = p["last_val_step"], dict(p["window"])
        for name, state in ckpt["callbacks"].items():
            if name in self.callbacks and hasattr(self.callbacks[name], "load_state_dict"):
                self.callbacks[name].load_state_dict(state)
        checkpoint.set_rng_state(ckpt["rng"])
        self.print(f"resumed from {path} at epoch {self.epoch}, step {self.global_step}")

    def _request_stop(self, signal_name: str) -> None:
        self.print(f"received {signal_name}: finishing this step, then saving last.pt")
        self.should_stop = self.interrupted = True
