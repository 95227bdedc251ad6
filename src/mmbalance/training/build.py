"""From a configuration to data, model and method."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from ..config import RunConfig
from ..data import DATASETS, DataBundle, from_arrays, load_array_file, make_synthetic
from ..data.arrays import collate
from ..data.bundle import data_kind
from ..errors import ConfigError
from ..methods import Method, get_method
from ..models import MultimodalModel, build_encoder, default_encoder
from ..models.registry import encoder_for
from .samplers import EvalShardSampler, ResampledDataset, ResumableSampler


def build_data(cfg: RunConfig) -> DataBundle:
    """Loads ``cfg.data_spec``: ``synthetic``, a built-in dataset name (with ``data.root``),
    or a path to a ``.npz``/``.h5`` file."""
    d = cfg.data
    kind = data_kind(cfg.data_spec)
    if kind == "synthetic":
        arrays = make_synthetic(d)  # DataConfig is a SyntheticSpec
        data = from_arrays({"x1": arrays["x1"], "x2": arrays["x2"]}, arrays["label"], arrays["split"],
                           standardize=d.standardize, source="synthetic", extras={"kind": arrays["kind"]})
        return DataBundle.from_arrays(data)
    if kind == "dataset":
        return DATASETS[cfg.data_spec](d)
    return DataBundle.from_arrays(load_array_file(Path(cfg.data_spec), standardize=d.standardize, seed=d.seed,
                                                  task=d.task))


def build_model(data: DataBundle, cfg: RunConfig) -> MultimodalModel:
    """One encoder per modality (``model.encoder``, else the dataset's choice, else by
    shape) and the configured fusion."""
    encoders = {}
    for name, shape in data.shapes.items():
        choice = (encoder_for(name, cfg.model.encoder, data.shapes) or data.encoders.get(name)
                  or default_encoder(shape))
        encoders[name] = build_encoder(choice, shape, cfg.model, modality=name)
    return MultimodalModel(encoders, data.num_classes, fusion=cfg.model.fusion,
                           fusion_hidden=cfg.model.fusion_hidden, shared_dim=cfg.model.shared_dim)


def build_method(cfg: RunConfig, model: MultimodalModel) -> Method:
    """The registered method with the configuration's hyperparameters."""
    method = get_method(cfg.method)(model, cfg.hparams)
    method.regression_loss = cfg.model.regression_loss
    return method


def hold_out(data: DataBundle, rows: int, seed: int) -> Tuple[DataBundle, Subset]:
    """``data`` whose training split lacks ``rows`` rows, and those rows (both in the original
    order): a uniform draw without replacement from numpy's ``default_rng((seed, 1))``, so the
    same seed holds out the same rows in every process and on every resume, independently of
    the training order's generator. For a method's held-out passes (``Method.held_out_rows``)."""
    total = len(data.train)
    if not 0 < rows < total:
        raise ConfigError(f"cannot hold out {rows} of the {total} training rows (need 1 to {total - 1})")
    picked = np.sort(np.random.default_rng((seed, 1)).permutation(total)[:rows])
    kept = np.setdiff1d(np.arange(total), picked)
    return (dataclasses.replace(data, train=Subset(data.train, kept.tolist())),
            Subset(data.train, picked.tolist()))


def loaders(data: DataBundle, cfg: RunConfig, seed: int, method: Method | None = None):
    """The train loader's shuffle generator (checkpointed for exact resume), and the train
    (shuffled by a :class:`ResumableSampler`; its rows follow ``method.sample_plan`` when the
    method re-samples), val and test loaders. Val and test use an
    :class:`EvalShardSampler`: under DDP every row is scored once, with no padding."""
    plan = method.sample_plan if method is not None and method.resamples else None
    train = ResampledDataset(data.train, list(data.shapes)) if plan is not None else data.train
    kw = dict(batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers, pin_memory=cfg.data.pin_memory,
              persistent_workers=cfg.data.num_workers > 0, collate_fn=collate)
    gen = torch.Generator().manual_seed(seed)
    return gen, (DataLoader(train, sampler=ResumableSampler(train, gen, plan), generator=gen, **kw),
                 DataLoader(data.val, sampler=EvalShardSampler(data.val), **kw),
                 DataLoader(data.test, sampler=EvalShardSampler(data.test), **kw))
