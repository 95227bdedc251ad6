"""``train``: one configured run, with checkpoints, early stopping and ``metrics.json``."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping
from torch.utils.data import DataLoader
from lightning.pytorch.strategies import DDPStrategy

from ..config import RunConfig, record, resolve_data_spec
from ..data.check import check_bundle
from ..engine import RunDir, atomic_write_text
from ..errors import ConfigError, Interrupted
from ..methods import get_method
from ..methods.pipeline import Stage
from .build import build_data, build_method, build_model, hold_out, loaders
from .checkpoint_io import AtomicCheckpointIO
from .checkpoints import BestCheckpoint, LastCheckpoint, graceful_signals, raise_if_stopped
from .loggers import build_loggers
from .options import check_trainer
from .module import BalanceModule
from .probe import final_probe, probe_callbacks, probe_metrics
from .epoch_lines import EpochLines
from .progress import run_label, say, use_bar
from .quiet import IGNORED_WARNINGS, drop_lightning_chatter

MINIMISED = ("mae", "mse")
__all__ = ["MINIMISED", "atomic_write_text", "train"]


def _strategy(cfg: RunConfig):
    if cfg.trainer.strategy == "ddp":
        return DDPStrategy(find_unused_parameters=True)  # unimodal stages leave encoders unused
    return cfg.trainer.strategy


def train(cfg: RunConfig, out_dir: str | Path, resume: bool = False, callbacks: Sequence[Any] = ()) -> Dict[str, Any]:
    """Trains ``cfg.method`` on ``cfg.data_spec`` and writes ``out_dir/metrics.json``.

    Checkpoints go to ``out_dir/checkpoints``: ``last.ckpt`` at the end of every epoch, every
    ``trainer.checkpoint_every_n_steps`` steps or ``trainer.checkpoint_every_minutes``, and on
    SIGINT/SIGTERM (then :class:`~mmbalance.errors.Interrupted` is raised); ``best.ckpt`` on
    the monitored validation metric, which scores the test split. ``resume=True`` continues
    from ``last.ckpt``, mid-epoch included. Pipeline methods (``ensemble``, ``unipre_*``)
    first run their stages in ``out_dir/stages/<name>``; with ``resume``, finished stages
    are skipped and an interrupted one continues. A run that fails before writing any
    checkpoint removes the folder it created.

    Args:
        callbacks: extra Lightning callbacks for the final stage (tests).

    Returns:
        The metrics written to ``metrics.json``.
    """
    check_trainer(cfg.trainer)
    drop_lightning_chatter()
    out = RunDir(out_dir)
    created = not out.path.exists()
    try:
        with graceful_signals(), _StageEntry(cfg, out) as entry:
            metrics = _train(cfg, out, resume, callbacks)
            entry.enter(out)
            return metrics
    except Interrupted:
        raise
    except BaseException:
        if created and _rank() == 0 and out.path.is_dir() and not any(out.path.rglob("*.ckpt")):
            shutil.rmtree(out.path, ignore_errors=True)
        raise


def _rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)


def _train(cfg: RunConfig, out: RunDir, resume: bool, callbacks: Sequence[Any]) -> Dict[str, Any]:
    began = time.perf_counter()
    last = out.last_checkpoint
    method_cls = get_method(cfg.method)
    data = build_data(cfg)
    checked = check_bundle(data, cfg.data_spec, cfg.data.root, progress=lambda line: say(cfg, line))
    if checked.items:  # every lazily read file of every split, now rather than while scoring
        say(cfg, checked.summary(cfg.data_spec))
    plan = method_cls.stages(list(data.shapes), cfg.hparams)
    with torch.random.fork_rng(devices=[]):  # a bad option fails now, before the start line or a stage
        build_method(cfg, build_model(data, cfg))
    if resume and not last.exists() and not (plan and out.stages.exists()):
        raise ConfigError(f"--resume: no checkpoint at {last}")
    out.mkdir()
    out.write_config(record(cfg))
    out.write_inputs(data.input_spec().to_dict())  # load_run rebuilds the model from it, without the data
    _say_start(cfg, data, out, plan, resume and last.exists())
    stages_began = time.perf_counter()
    stages = _run_stages(cfg, plan, out, resume)
    stages_seconds = time.perf_counter() - stages_began
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # the data is built once, above:
    method = build_method(cfg, build_model(data, cfg))         # its randomness is per item, not per build
    if stages:
        method.load_stages(out.stage_states(stages))
    held = method.held_out_rows(len(data.train))
    if held:  # the method's epoch passes read these rows instead of the val split; never trained on
        data, held_out = hold_out(data, held, cfg.seed)
        say(cfg, f"{cfg.method}: {held} training rows held out of training for the method's epoch passes")
    module = BalanceModule(method, cfg, metrics=data.metrics)
    module.held_out = held_out if held else None
    module.loader_generator, (train_dl, val_dl, test_dl) = loaders(data, cfg, cfg.seed, method)
    module.train_sampler = train_dl.sampler
    trainer, checkpoint = _trainer(cfg, out, callbacks)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=IGNORED_WARNINGS)
        if method_cls.trains_final:
            trainer.fit(module, train_dl, val_dl, ckpt_path=str(last) if resume and last.exists() else None)
        raise_if_stopped(trainer.current_epoch, trainer.global_step, trainer.global_rank)
        seconds = time.perf_counter() - start
        nonfinite_steps = module.nonfinite_steps  # loading the best checkpoint restores an older count
        best = checkpoint.best_model_path or None
        say(cfg, (f"trained in {seconds:.1f} s; " if method_cls.trains_final else "")
            + f"scoring the {'best checkpoint' if best else 'model'} on val and test")
        scoring = time.perf_counter()
        val = trainer.validate(module, val_dl, ckpt_path=best, verbose=False)[0]
        # a non-finite validation value is logged as 0.0 (the monitor needs a number): report it
        # as it was, so that _flag_nonfinite flags it instead of metrics.json holding a false 0
        val.update({f"val/{k}": v for k, v in module.last_val.items() if not math.isfinite(v)})
        test = trainer.test(module, test_dl, ckpt_path=best, verbose=False)[0]
        scored = time.perf_counter()
    metrics = {
        "method": cfg.method, "seed": cfg.seed, "data": resolve_data_spec(cfg.data_spec), "config": record(cfg),
        "val": _strip(val, "val/"), "test": _strip(test, "test/"), "nonfinite_metrics": [],
        "best_checkpoint": Path(best).name if best else None, "epochs_run": trainer.current_epoch,
        "train_seconds": round(seconds + sum(m["train_seconds"] for m in stages.values()), 3),
        "nonfinite_steps": nonfinite_steps, "optimizer": cfg.optim.name,
    }
    if stages:
        metrics["stages"] = {name: {k: m[k] for k in ("method", "val", "test", "train_seconds")}
                             for name, m in stages.items()}
    metrics.update(probe_metrics(trainer))
    if cfg.trainer.final_probe:  # the model holds the best checkpoint's weights since test()
        say(cfg, "fitting a linear probe on each modality's frozen features")
        metrics["probe"] = final_probe(module.method.model, data)
    _flag_nonfinite(metrics)
    # where this process's time went (bench speed's loop row reads it; the interpreter's
    # start and imports are the rest of the whole-run wall time)
    metrics["seconds"] = {"setup": round(start - began - stages_seconds, 3), "stages": round(stages_seconds, 3),
                          "fit": round(seconds, 3), "score": round(scored - scoring, 3),
                          "probe_and_write": None}
    if trainer.is_global_zero:  # every test row once, in order, whatever the strategy
        out.write_predictions(module.method, DataLoader(data.test, batch_size=cfg.data.batch_size))
        metrics["seconds"]["probe_and_write"] = round(time.perf_counter() - scored, 3)
        out.write_metrics(metrics)
    return metrics


class _StageEntry:
    """Enters a finished ``unimodal`` run into ``trainer.stage_cache`` as the stage it is.

    A standalone unimodal run with the configuration of a pipeline's stage (same
    :func:`stage_key`: data, seed, model, optimizer, schedule) trains that very model, so the
    methods that start from it (``ensemble``, ``unipre_*``, ``method.init=unimodal``) reuse
    it instead of training it again. While the run trains it holds the stage's lock when it
    can take it at once, so a pipeline needing that stage in another worker waits for this
    run instead of training the same model beside it; if another process holds the lock
    (it is training that stage), the run trains without it. The entry is a copy (hard links
    where the file system allows), made under the lock unless the stage is already there.
    A failure to write it warns: the run is finished and kept, the cache only saves time."""

    def __init__(self, cfg: RunConfig, out: RunDir) -> None:
        self.cfg, self.cached, self._handle = cfg, None, None
        if (cfg.trainer.stage_cache and cfg.method == "unimodal" and _rank() == 0
                and getattr(cfg.hparams, "modality", None) and getattr(cfg.hparams, "init", "scratch") != "unimodal"):
            self.name = f"unimodal_{cfg.hparams.modality}"
            cached = RunDir(Path(cfg.trainer.stage_cache) / f"{self.name}-{stage_key(cfg)}")
            if cached.path.resolve() != out.path.resolve():  # not a stage trained into the cache itself
                self.cached = cached

    @property
    def _lock(self) -> Path:
        return self.cached.path.with_name(self.cached.path.name + ".lock")

    def __enter__(self) -> "_StageEntry":
        if self.cached is not None and not self.cached.is_finished():
            try:
                self._lock.parent.mkdir(parents=True, exist_ok=True)
                handle = open(self._lock, "w")
            except OSError:
                return self  # reported by enter()
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._handle = handle
                _fresh_view(self._lock)
            except BlockingIOError:  # another process trains this stage: do not wait for it
                handle.close()
            except OSError as exc:  # no locks on this file system: fail before training, not after
                handle.close()
                raise _lock_error(self._lock, exc) from None
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def enter(self, out: RunDir) -> None:
        if self.cached is None or not out.is_finished():
            return
        try:
            with contextlib.nullcontext() if self._handle is not None else _locked(self._lock):
                if self.cached.is_finished():
                    return
                cached = self.cached
                tmp = cached.path.with_name(f".{cached.path.name}.tmp{os.getpid()}")
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(out.path, tmp, copy_function=_link_or_copy,
                                ignore=shutil.ignore_patterns(".*.tmp*", RunDir.STAGES))
                if cached.path.exists():  # an interrupted stage's leftovers: the finished run replaces them
                    shutil.rmtree(cached.path)
                os.replace(tmp, cached.path)
        except OSError as exc:
            warnings.warn(f"{out.path}: not entered into the stage cache {self.cfg.trainer.stage_cache} ({exc}); "
                          "the methods that start from it will train the stage themselves")
            return
        say(self.cfg, f"entered this run into the stage cache as {self.name} ({self.cached.path})")


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link for the files that are only ever replaced by a rename (checkpoints,
    metrics, predictions); a copy for the loggers' files, which grow in place."""
    if "logs" not in Path(src).parts:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)


def _say_start(cfg: RunConfig, data, out: RunDir, plan: List[Stage], resuming: bool) -> None:
    """The run's first line: what trains on how much data, where, and what comes first."""
    sizes = " / ".join(f"{len(split)} {name}" for name, split in
                       (("train", data.train), ("val", data.val), ("test", data.test)))
    t = cfg.trainer
    first = f"; first {len(plan)} stage{'s' if len(plan) > 1 else ''} ({', '.join(s.name for s in plan)})" \
        if plan else ""
    say(cfg, f"{'resuming' if resuming else 'training'} on {cfg.data_spec} ({sizes} rows), at most "
             f"{t.max_epochs} epochs on {t.accelerator} x{t.devices}{first} -> {out.path}")


def _run_stages(cfg: RunConfig, plan: List[Stage], out: RunDir, resume: bool) -> Dict[str, Dict[str, Any]]:
    """Runs (or, on resume, skips or continues) each stage the method's ``init`` asks for.

    With ``trainer.stage_cache`` set, a stage trains once per configuration in
    ``<cache>/<stage>-<key>`` (``key``: a hash of everything that shapes its result) and the
    run's ``stages/<stage>`` links to it, so a sweep trains each unimodal model once for all
    the methods that start from it; a lock makes parallel workers wait for one another."""
    results: Dict[str, Dict[str, Any]] = {}
    for number, stage in enumerate(plan, 1):
        start = time.perf_counter()
        name = f"stage {number}/{len(plan)} {stage.name}"
        stage_method = get_method(stage.method)
        stage_cfg = dataclasses.replace(cfg, method=stage.method,
                                        hparams=stage_method.Hyperparameters(**stage.hparams))
        stage_lr = getattr(cfg.hparams, "stage_lr", None)
        if stage_lr is not None:  # the unimodal models' own learning rate (paper A.4)
            stage_cfg.optim = dataclasses.replace(cfg.optim, lr=stage_lr)
        stage_dir = out.stage(stage.name)
        if cfg.trainer.stage_cache:
            cached = RunDir(Path(cfg.trainer.stage_cache) / f"{stage.name}-{stage_key(stage_cfg)}")
            def waiting(name=name, cached=cached) -> None:
                say(cfg, f"{name}: waiting for another process that trains it ({cached.path})")
            with _locked(cached.path.with_name(cached.path.name + ".lock"), on_wait=waiting):
                trained = not cached.is_finished()
                if trained:
                    say(cfg, f"{name}: training {run_label(stage_cfg)} into the stage cache")
                    train(stage_cfg, cached.path, resume=cached.last_checkpoint.exists())
            stage_dir.link_to(cached)
            results[stage.name] = cached.read_metrics()
        else:  # a finished stage is reused only when its configuration is the same one
            key = stage_key(stage_cfg)
            trained = not (resume and stage_dir.is_finished() and stage_dir.read_stage_key() == key)
            if trained:
                stage_dir.mkdir().write_stage_key(key)
                say(cfg, f"{name}: training {run_label(stage_cfg)}")
                results[stage.name] = train(stage_cfg, stage_dir.path,
                                            resume=resume and stage_dir.last_checkpoint.exists())
            else:
                results[stage.name] = stage_dir.read_metrics()
        score = results[stage.name].get("val", {}).get(cfg.trainer.monitor)
        shown = "" if score is None else f"; val {cfg.trainer.monitor} {score:.4f}"
        done = f"done in {time.perf_counter() - start:.1f} s" if trained else "reused, already trained"
        say(cfg, f"{name}: {done}{shown}")
    if plan:
        say(cfg, f"stages done; training {run_label(cfg)}" if get_method(cfg.method).trains_final
            else "stages done; combining them")
    return results


#: trainer keys that do not change what a stage learns (left out of its cache key)
_NOT_SHAPING = ("progress", "log_every_n_steps", "stage_cache", "probe_every", "final_probe",
                "checkpoint_every_n_steps", "checkpoint_every_minutes", "log_term_grad_norms", "logger")


def stage_key(cfg: RunConfig) -> str:
    """12 hex digits of a hash of the stage's configuration (method, data, model, optimizer,
    schedule, seed and the trainer keys that shape the result)."""
    tree = cfg.to_dict()
    tree["trainer"] = {k: v for k, v in tree["trainer"].items() if k not in _NOT_SHAPING}
    tree["data_spec"] = str(Path(cfg.data_spec).resolve()) if Path(cfg.data_spec).exists() else cfg.data_spec
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:12]


@contextlib.contextmanager
def _locked(path: Path, on_wait=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # another worker holds it: say so, then wait
                if on_wait is not None:
                    on_wait()
                fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as exc:
            raise _lock_error(path, exc) from None
        _fresh_view(path)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fresh_view(lock: Path) -> None:
    """After taking ``lock``: an NFS client caches lookups (another node's new file can look
    absent for up to ``acdirmax``, a minute); setting a folder's mode to itself makes it fetch
    the folder's attributes again, so the checks under the lock see the other job's stage."""
    for folder in (lock.parent, lock.with_name(lock.name[:-len(".lock")])):
        try:
            os.chmod(folder, folder.stat().st_mode & 0o7777)
        except OSError:
            pass


def _lock_error(path: Path, exc: OSError) -> ConfigError:
    return ConfigError(f"trainer.stage_cache: cannot lock {path} ({exc.strerror or exc}); the cache needs flock "
                       "that holds across nodes (NFS with its lock service, Lustre mounted with -o flock, GPFS, "
                       "CephFS), or leave trainer.stage_cache unset")


def _trainer(cfg: RunConfig, out: RunDir, extra: Sequence[Any] = ()):
    t = cfg.trainer
    monitor = f"val/{t.monitor}"
    mode = "min" if t.monitor in MINIMISED else "max"
    checkpoint = BestCheckpoint(dirpath=out.checkpoints, filename=RunDir.BEST, monitor=monitor, mode=mode,
                                save_last=False, save_top_k=1, enable_version_counter=False)
    last = LastCheckpoint(out.last_checkpoint, t.checkpoint_every_n_steps, t.checkpoint_every_minutes)
    callbacks = [checkpoint, last, *probe_callbacks(cfg, out.path), *extra]
    bar = t.progress and use_bar()  # a redrawn bar on a terminal; one line per epoch anywhere else
    if t.progress and not bar:
        callbacks.append(EpochLines(run_label(cfg), monitor, mode))
    if t.patience > 0:
        callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=t.patience))
    trainer = L.Trainer(
        max_epochs=t.max_epochs, accelerator=t.accelerator, devices=t.devices, strategy=_strategy(cfg),
        precision=t.precision, deterministic=t.deterministic, callbacks=callbacks,
        logger=build_loggers(t.logger, str(out.path), out.path.name, record(cfg)), num_sanity_val_steps=0,
        plugins=[AtomicCheckpointIO()], enable_progress_bar=bar,  # clipping: BalanceModule
        enable_model_summary=False, log_every_n_steps=t.log_every_n_steps, default_root_dir=str(out.path))
    return trainer, checkpoint


def _flag_nonfinite(metrics: Dict[str, Any]) -> None:
    """Replaces NaN/Inf metric values by ``None`` and lists them in ``nonfinite_metrics``
    (for example the correlation of a constant prediction), so none passes unflagged."""
    for split in ("val", "test"):
        for key, value in metrics[split].items():
            if not math.isfinite(value):
                metrics[split][key] = None
                metrics["nonfinite_metrics"].append(f"{split}/{key}")


def _strip(values: Dict[str, float], prefix: str) -> Dict[str, float]:
    return {k[len(prefix):] if k.startswith(prefix) else k: float(v) for k, v in values.items()}
