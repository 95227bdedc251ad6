"""The one training loop: a LightningModule that drives any :class:`Method` through its hooks.

Each batch is :func:`mmbalance.engine.train_step` (the same step the speed benchmark
times); Lightning contributes its backward (precision, DDP), its optimizer wrapper,
gradient clipping, checkpoints and logging. The optimizer is therefore driven manually,
and the per-epoch schedule is stepped at the end of each training epoch.
"""

from __future__ import annotations

import math
import random
import warnings
from typing import Dict, Optional

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection, PearsonCorrCoef
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from ..config import RunConfig
from ..engine import LRSchedule, build_optimizer, train_step
from ..engine.step import BALANCE, GRAD, GRAD_SHARE
from ..errors import ConfigError, NonFiniteLossError
from ..methods import Method
from ..types import Batch, LossTerms
from .passes import EpochPasses


def _metrics(task: str, num_classes: int) -> MetricCollection:
    if task == "regression":
        return MetricCollection({"mae": MeanAbsoluteError(), "mse": MeanSquaredError(),
                                 "corr": PearsonCorrCoef()})
    return MetricCollection({"accuracy": MulticlassAccuracy(num_classes, average="micro"),
                             "macro_f1": MulticlassF1Score(num_classes, average="macro")})


def _numpy_state():
    """NumPy's global RNG state with its key array as a tensor (safe for weights-only loads)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)


class BalanceModule(L.LightningModule):
    """Runs ``method`` in the shared loop: loss, gradient edits, groups, epoch and
    validation hooks; evaluates the fused prediction and every unimodal head."""

    def __init__(self, method: Method, cfg: RunConfig, metrics=None) -> None:
        super().__init__()
        self.automatic_optimization = False  # engine.train_step runs backward and the step
        self.method, self.cfg = method, cfg
        model = method.model
        self.task = model.task
        factory = metrics or _metrics  # a dataset's own metrics (DataBundle.metrics), if any
        make = lambda: factory(model.task, model.num_classes)  # noqa: E731
        self.eval_metrics = nn.ModuleDict({
            stage: nn.ModuleDict({"fused": make(), **{f"uni_{m}": make() for m in model.modalities}})
            for stage in ("val", "test")})
        self._seen = {"val": set(), "test": set()}
        self.nonfinite_steps = 0
        self.last_val: Dict[str, float] = {}
        self.loader_generator: Optional[torch.Generator] = None  # the train loader's shuffle RNG
        self.train_sampler = None  # its ResumableSampler (mid-epoch resume)
        self.held_out = None  # training rows held out for the method's passes (Method.held_out_rows)
        self._epoch_batches = 0  # training batches done in the current epoch
        self._in_epoch = False  # between on_train_epoch_start and on_train_epoch_end
        self._resumed_mid_epoch = False
        self._skipped = False  # the current step's loss was non-finite and skipped

    # ------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: Dict) -> None:
        """Adds what an exact resume needs beyond weights/optimizer/schedule: RNG streams
        (permutations, dropout, data order) and the non-finite step count.

        Under DDP every rank calls this (Lightning's ``save_checkpoint`` runs on all ranks and
        only rank 0 writes): each rank's RNG streams are gathered into ``rank_rng`` (one entry
        per rank), so that a resume gives every rank its own streams back, not rank 0's. The
        top-level streams are rank 0's (and a single process's)."""
        streams = self._rng_streams()
        world = self.trainer.world_size if self._trainer is not None else 1
        ranks = None
        if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            ranks = [None] * world
            torch.distributed.all_gather_object(ranks, streams)
        checkpoint["mmbalance"] = {
            **streams, "rank_rng": ranks, "world": world,
            "nonfinite_steps": self.nonfinite_steps,
            # mid-epoch (a step checkpoint): where the epoch's data order came from, and how far in
            # (in batches of this rank: under DDP every rank has done as many)
            "epoch_batches": self._epoch_batches if self._in_epoch else 0,
            "sampler_rng": getattr(self.train_sampler, "epoch_state", None) if self._in_epoch else None,
        }

    def _rng_streams(self) -> Dict:
        """This process's RNG streams, as tensors, ints and tuples (weights-only loadable)."""
        return {"torch_rng": torch.get_rng_state(), "numpy_rng": _numpy_state(), "python_rng": random.getstate(),
                "loader_rng": self.loader_generator.get_state() if self.loader_generator is not None else None}

    def on_load_checkpoint(self, checkpoint: Dict) -> None:
        state = checkpoint.get("mmbalance")
        if not state:
            return
        rank = self.trainer.global_rank if self._trainer is not None else 0
        world = self.trainer.world_size if self._trainer is not None else 1
        ranks = state.get("rank_rng") or []
        streams = ranks[rank] if rank < len(ranks) else state  # this rank's own, else rank 0's
        torch.set_rng_state(streams["torch_rng"])
        kind, keys, pos, has_gauss, gauss = streams["numpy_rng"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        random.setstate(streams["python_rng"])
        if streams["loader_rng"] is not None and self.loader_generator is not None:
            self.loader_generator.set_state(streams["loader_rng"])
        self.nonfinite_steps = state["nonfinite_steps"]
        done = state.get("epoch_batches", 0)
        if done and state.get("sampler_rng") is not None and self.train_sampler is not None:
            saved_world = state.get("world", 1)
            if saved_world != world and rank == 0:
                warnings.warn(f"resuming mid-epoch on {world} device(s) from a checkpoint written on {saved_world}: "
                              f"the rest of epoch {checkpoint.get('epoch', '?')} skips the first {done} batches "
                              "of this device's share of the epoch's order, so its rows are not exactly those an "
                              f"uninterrupted run would have read; resume on {saved_world} device(s) to continue "
                              "exactly", stacklevel=2)
            self.train_sampler.resume_at(state["sampler_rng"], done * self.cfg.data.batch_size)
            self._epoch_batches, self._resumed_mid_epoch = done, True

    # ----------------------------------------------------------------- training
    def training_step(self, batch, batch_idx: int) -> Optional[Tensor]:
        self._epoch_batches += 1
        inputs, labels = batch
        every = max(1, self.cfg.trainer.log_every_n_steps)
        self._skipped = False
        optimizer = self.optimizers()
        loss = train_step(self.method, Batch(inputs, labels), optimizer, backward=self.manual_backward,
                          clip=self._clip, on_nonfinite=self._nonfinite,
                          grad_norms=self.cfg.trainer.log_term_grad_norms and self.global_step % every == 0,
                          inner_step=lambda: self.trainer.strategy.optimizer_step(optimizer.optimizer, lambda: None))
        if self._skipped:  # (trainer.skip_nonfinite); train_step's own check decided, no second device sync
            return None
        size = labels.shape[0]
        # Step values reach the loggers only every trainer.log_every_n_steps steps, and one
        # self.log call costs about as much as a small model's whole step: log them only in
        # the steps whose values are written (the same files, a fraction of the calls).
        written = self._step_is_written()
        for name, value in loss.logs.items():
            if name.startswith((GRAD, GRAD_SHARE)):  # trainer.log_term_grad_norms: the epoch's mean
                self.log(f"train/{name}", float(value), on_step=False, on_epoch=True, batch_size=size)
            elif not written:
                continue
            elif name.startswith(BALANCE):  # what the method's gradient edit reported
                self.log(name, float(value), on_step=True, on_epoch=False)
            else:
                self.log(f"train/{name}", float(value), batch_size=size)
        if written:
            self.log("train/loss", loss.total.detach(), batch_size=size)
            for name, value in loss.terms.items():
                self.log(f"train/{name}", value.detach().float(), batch_size=size)
        return loss.total.detach()

    def _step_is_written(self) -> bool:
        """Whether Lightning writes this step's logged values (every ``log_every_n_steps``
        steps, and the last step before a stop); True when that cannot be told."""
        connector = getattr(self._trainer, "_logger_connector", None) if self._trainer is not None else None
        return bool(getattr(connector, "should_update_logs", True))

    def _clip(self) -> None:
        if self.cfg.optim.grad_clip:
            self.clip_gradients(self.optimizers(), gradient_clip_val=self.cfg.optim.grad_clip,
                                gradient_clip_algorithm="norm")

    def _nonfinite(self, loss: LossTerms) -> None:
        bad = [k for k, v in loss.terms.items() if not torch.isfinite(v)] or ["total"]
        step = self.global_step
        if not self.cfg.trainer.skip_nonfinite:
            raise NonFiniteLossError(f"non-finite loss at step {step} (epoch {self.current_epoch}): "
                                     f"term {bad[0]!r} is {float(loss.terms.get(bad[0], loss.total))}; "
                                     "set trainer.skip_nonfinite=true to skip such steps")
        self.nonfinite_steps += 1
        self._skipped = True
        return None

    def on_train_epoch_start(self) -> None:
        self._in_epoch = True
        if self._resumed_mid_epoch:  # the epoch-start hook ran before the step checkpoint
            self._resumed_mid_epoch = False
            return
        self._epoch_batches = 0
        self._begin_phase(self.current_epoch)
        self._log_hook(self.method.on_epoch_start(self.current_epoch, self.trainer.train_dataloader))

    def _begin_phase(self, epoch: int) -> None:
        """A staged method's new phase (``Method.phase``) may start with a fresh optimizer:
        its state is cleared, as a new optimizer would start (the checkpoint then holds it
        cleared, so a resume in the middle of the phase goes on from the same state)."""
        phase = self.method.phase(epoch)
        if phase is not None and phase.fresh_optimizer and (epoch == 0 or self.method.phase(epoch - 1) != phase):
            self.optimizers().optimizer.state.clear()

    def on_train_epoch_end(self) -> None:
        self._in_epoch = False
        self._log_hook(self.method.on_epoch_pass(self.current_epoch, self.epoch_passes()))
        self._log_hook(self.method.on_epoch_end(self.current_epoch))
        self.log("nonfinite_steps", float(self.nonfinite_steps))
        self.lr_schedulers().step()  # manual optimization: Lightning leaves the schedule to us

    def epoch_passes(self) -> EpochPasses:
        """Lazy passes over this fit's training split and its validation split (the loaders
        ``fit`` was given; the test split is never one of them), in eval mode under no_grad,
        each rank over its shard, under the run's precision (:mod:`.passes`). When the method
        holds training rows out (:attr:`held_out`), ``val`` is those rows."""
        trainer = self.trainer
        train = trainer.train_dataloader
        val = trainer.val_dataloaders
        val = val[0] if isinstance(val, (list, tuple)) and val else val
        val = self.held_out if self.held_out is not None else getattr(val, "dataset", None)
        datasets = {"train": getattr(train, "dataset", None), "val": val}
        collate = getattr(train, "collate_fn", None)
        return EpochPasses(self.method, datasets, self.cfg.data.batch_size, collate, device=self.device,
                           context=trainer.precision_plugin.forward_context)

    def _log_hook(self, values: Dict[str, float]) -> None:
        for name, value in values.items():
            self.log(f"balance/{name}", float(value), on_step=False, on_epoch=True)
        if values and self.trainer.lr_scheduler_configs:
            scheduler = self.trainer.lr_scheduler_configs[0].scheduler
            self.method.update_param_groups(scheduler.optimizer.param_groups)
            scheduler.refresh()

    # --------------------------------------------------------------- evaluation
    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate("val", batch)

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate("test", batch)

    def _evaluate(self, stage: str, batch) -> None:
        inputs, labels = batch
        out = self.method(inputs)
        if stage == "val":
            self.method.on_validation_batch(out, labels)
        self._update(stage, "fused", self.method.predict(out), labels)
        for m, logits in out.unimodal_logits.items():
            self._update(stage, f"uni_{m}", logits, labels)

    def _update(self, stage: str, key: str, logits: Tensor, labels: Tensor) -> None:
        self._seen[stage].add(key)
        metric = self.eval_metrics[stage][key]
        if self.task == "regression":
            metric.update(logits.float().reshape(-1), labels.float().reshape(-1))
        else:
            metric.update(logits.float().argmax(-1), labels)

    def _compute(self, stage: str) -> Dict[str, float]:
        values: Dict[str, float] = {}
        for key in sorted(self._seen[stage]):
            metric = self.eval_metrics[stage][key]
            computed = metric.compute()
            suffix = "" if key == "fused" else "/" + key[4:]
            for name, value in computed.items():
                values[f"{name}{suffix}"] = float(value)
            metric.reset()
        self._seen[stage].clear()
        return values

    def on_validation_epoch_end(self) -> None:
        values = self._compute("val")
        self.last_val = values
        for name, value in values.items():
            self.log(f"val/{name}", value if math.isfinite(value) else 0.0, prog_bar=name == "accuracy")
        self._log_hook(self.method.on_validation_end(values))

    def on_test_epoch_end(self) -> None:
        for name, value in self._compute("test").items():
            self.log(f"test/{name}", value)

    # ---------------------------------------------------------------- optimizer
    def configure_optimizers(self):
        if not getattr(self.method.model, "materialized", True):  # DDP and checkpoints need sized parameters
            raise ConfigError("the model has not seen a batch, so its feature sizes are unknown: call "
                              "model.materialize(inputs) on one batch before training it with Lightning")
        optimizer = build_optimizer(self.method.optimizer_groups(), self.cfg.optim)
        schedule = LRSchedule(optimizer, self.cfg.optim, self.cfg.trainer.max_epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}

    def lr_scheduler_step(self, scheduler, metric) -> None:  # not called under manual optimization
        scheduler.step()
