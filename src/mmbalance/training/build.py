"""From a configuration to data, model and method."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..config import RunConfig
from ..data import ArrayDataset, MultimodalArrays, SyntheticSpec, from_arrays, load_array_file, make_synthetic
from ..errors import ConfigError
from ..methods import Method, get_method
from ..models import MLPEncoder, MultimodalModel


def build_data(cfg: RunConfig) -> MultimodalArrays:
    """Loads ``cfg.data_spec``: ``synthetic`` or a path to a ``.npz``/``.h5`` file."""
    d = cfg.data
    if cfg.data_spec == "synthetic":
        spec = SyntheticSpec(n=d.n, shared=d.shared, unique1=d.unique1, unique2=d.unique2,
                             num_classes=d.num_classes, latent_dim=d.latent_dim, dim=d.dim,
                             signal=(d.signal1, d.signal2), noise=(d.noise1, d.noise2),
                             depth=(d.depth1, d.depth2), seed=d.seed)
        arrays = make_synthetic(spec)
        return from_arrays({"x1": arrays["x1"], "x2": arrays["x2"]}, arrays["label"], arrays["split"],
                           standardize=d.standardize, source="synthetic", extras={"kind": arrays["kind"]})
    path = Path(cfg.data_spec)
    if path.suffix in (".npz", ".h5", ".hdf5") or path.exists():
        return load_array_file(path, standardize=d.standardize, seed=d.seed)
    raise ConfigError(f"--data {cfg.data_spec!r} is neither 'synthetic' nor a .npz/.h5 file")


def build_model(data: MultimodalArrays, cfg: RunConfig) -> MultimodalModel:
    """MLP encoders on (flattened) features and the configured fusion."""
    m = cfg.model
    encoders = {}
    for name, shape in data.shapes.items():
        in_dim = int(torch.tensor(shape).prod()) if shape else 1
        encoders[name] = MLPEncoder(in_dim, m.feature_dim, m.hidden, m.layers, m.dropout)
    return MultimodalModel(encoders, data.num_classes, fusion=m.fusion, fusion_hidden=m.fusion_hidden)


def build_method(cfg: RunConfig, model: MultimodalModel) -> Method:
    """The registered method with the configuration's hyperparameters."""
    return get_method(cfg.method)(model, cfg.hparams)


def loaders(data: MultimodalArrays, cfg: RunConfig, seed: int):
    """Train (shuffled with a seeded generator), val and test loaders."""
    kw = dict(batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers, pin_memory=cfg.data.pin_memory,
              persistent_workers=cfg.data.num_workers > 0)
    gen = torch.Generator().manual_seed(seed)
    train = DataLoader(ArrayDataset(data, "train"), shuffle=True, generator=gen, **kw)
    return train, DataLoader(ArrayDataset(data, "val"), **kw), DataLoader(ArrayDataset(data, "test"), **kw)
