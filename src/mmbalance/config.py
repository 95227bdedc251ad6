"""Run configuration: typed defaults in code, YAML and ``--set key=value`` only override.

Precedence: code defaults < YAML file < ``--set``. An unknown key fails at once and lists
the valid ones; a value of the wrong type or range fails naming the key.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import yaml

from .config_paths import PATH_KEYS, absolute_path_value, resolve_data_spec  # noqa: F401 (re-exported)
from .errors import ConfigError, closest, did_you_mean


@dataclass
class SyntheticSpec:
    """The synthetic generator's settings (``data/synthetic.py``, paper Section 4.1): the
    probabilities of the datapoint types, per modality the signal strength ``s_m``, noise
    scale ``sigma_m`` and map depth, and the seed. The one definition: :class:`DataConfig`
    inherits these fields, so ``--set data.n=...`` and ``make_synthetic(cfg.data)`` work."""

    seed: int = 0  # data generation and split seed, independent of the run seed
    n: int = 6000
    shared: float = 0.1
    unique1: float = 0.8
    unique2: float = 0.1
    num_classes: int = 5
    latent_dim: int = 10
    dim: int = 100
    signal1: float = 1.5
    signal2: float = 1.5
    noise1: float = 1.0
    noise2: float = 1.0
    depth1: int = 1
    depth2: int = 3
    family: str = "gaussian"  # generator family: gaussian | signed (data/synthetic.py)
    nuisance1: int = 0  # extra N(0, 1) columns appended to x1: memorisable, label-free
    nuisance2: int = 0

    # the per-modality pairs, as the generator and the Bayes ceiling read them
    signal = property(lambda self: (self.signal1, self.signal2))
    noise = property(lambda self: (self.noise1, self.noise2))
    depth = property(lambda self: (self.depth1, self.depth2))


@dataclass
class DataConfig(SyntheticSpec):
    """Data options: the synthetic generator's settings (inherited from
    :class:`SyntheticSpec`, used by ``--data synthetic``), then loading and real datasets."""

    batch_size: int = 64
    num_workers: int = 0
    pin_memory: bool = False
    standardize: bool = True
    root: Optional[str] = None
    # real datasets (--data NAME, data.root); None = the dataset's own default (docs/datasets.md)
    fold: Optional[int] = None  # 1-based: CREMA-D speaker folds 1-5, UCF-51 splits 1-3
    modalities: Optional[list] = None  # MOSI/MOSEI/Sth-Sth: which modalities, e.g. [video, text]
    task: str = "auto"  # MOSI/MOSEI: regression (auto) or classification (binary, label > 0)
    image_size: int = 224  # crop size of video frames
    num_frames: Optional[int] = None  # frames per clip (CREMA-D 3, AVE/UCF 4, Sth-Sth 16)
    sample_rate: Optional[int] = None  # audio rate in Hz (CREMA-D 22050, UCF 16000; AVE waveforms 16000)
    audio_seconds: float = 3.0  # audio length, shorter clips tiled (AVE's Conformer configs: 10, its whole clips)
    spectrogram_dir: Optional[str] = None  # folder of precomputed <clip>.pkl spectrograms
    val_fraction: float = 0.1  # validation share carved from train where no val list exists
    features: bool = False  # read features instead of frames: Sth-Sth pre-extracted features, CREMA-D face features
    audio_input: str = "spectrogram"  # CREMA-D/AVE/UCF-51: or waveform (for pretrained audio backbones)


@dataclass
class ModelConfig:
    """Encoders and fusion for vector data."""
    encoder: Optional[str] = None  # name for every modality, or "audio:mlp,video:cnn2d"; None: by dataset/shape
    fusion: str = "concat_linear"
    fusion_hidden: int = 128
    shared_dim: Optional[int] = None  # shared-head fusions (mla, reconboost): project each modality to N first
    feature_dim: int = 100
    hidden: int = 100
    layers: int = 2
    dropout: float = 0.0
    base_width: int = 64  # ResNet-18 stem width; 64 is the standard network (512-d features)
    pretrained: Optional[str] = None  # Hugging Face dir (pretrained*) or Swin checkpoint (swin3d); or audio=X,video=Y
    regression_loss: str = "mse"  # task loss of a regressor (one output): mse | l1 (the authors' MOSI/MOSEI runs)


#: torch's fused SGD fails when a parameter has no gradient in its first steps
FUSED_SGD = "optim.implementation=fused needs optim.name adam or adamw; use foreach with sgd"


@dataclass
class OptimConfig:
    """Optimizer, schedule and clipping."""

    name: str = "adam"  # adam | adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    eps: float = 1e-8
    schedule: str = "cosine"  # cosine (with linear warmup) | constant | step (x step_gamma every step_size epochs)
    warmup_epochs: int = 1
    step_size: int = 30  # schedule=step: epochs between two decays (torch StepLR's step_size)
    step_gamma: float = 0.1  # schedule=step: the factor of each decay
    grad_clip: float = 0.0  # 0 disables; max global L2 norm otherwise
    # how torch updates the parameters: foreach (one multi-tensor kernel per operation; the
    # same numbers as for_loop, torch's CPU default), for_loop, or fused (adam/adamw: one
    # kernel, fastest, differs from the others in the last float bits)
    implementation: str = "foreach"


@dataclass
class TrainerConfig:
    """The training loop (Lightning) options."""

    max_epochs: int = 30
    patience: int = 8  # early stopping on the monitored validation metric; 0 disables
    monitor: str = "accuracy"  # val metric; "mae"/"mse" are minimised
    accelerator: str = "cpu"
    devices: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    deterministic: bool = True
    skip_nonfinite: bool = False
    progress: bool = True
    log_every_n_steps: int = 10
    probe_every: int = 0  # fit linear probes on each modality's frozen features every K epochs; 0: off
    log_term_grad_norms: bool = False  # log each loss term's gradient norm per encoder (diagnose shows shares)
    stage_cache: Optional[str] = None  # folder where unimodal stages are trained once per configuration
    final_probe: bool = False  # after training: per-modality linear probes (best checkpoint, train -> test)
    checkpoint_every_n_steps: int = 0  # also rewrite last.ckpt every N optimizer steps; 0: off
    checkpoint_every_minutes: float = 10.0  # also rewrite last.ckpt after this much wall time; 0: off
    logger: str = "csv"  # csv, tensorboard, wandb or mlflow; logs/*/metrics.csv is always written too


@dataclass
class RunConfig:
    """Everything one ``mmbalance train`` run needs."""

    method: str = "joint"
    data_spec: str = "synthetic"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    hparams: Any = None  # the method's Hyperparameters instance

    def to_dict(self) -> Dict[str, Any]:
        out = {k: dataclasses.asdict(getattr(self, k)) for k in SECTIONS}
        out.update(method_name=self.method, data_spec=self.data_spec, seed=self.seed,
                   method=dataclasses.asdict(self.hparams) if self.hparams is not None else {})
        return out


#: data keys that only the synthetic generator reads (``seed`` stays: it also seeds user splits)
SYNTHETIC_KEYS = tuple(f.name for f in dataclasses.fields(SyntheticSpec) if f.name != "seed")
#: data keys that only the built-in real datasets read
DATASET_KEYS = ("root", "fold", "modalities", "image_size", "num_frames", "sample_rate", "audio_seconds",
                "spectrogram_dir", "val_fraction", "features", "audio_input")


def record(cfg: RunConfig, given: Optional[str] = None) -> Dict[str, Any]:
    """What ``config.yaml`` and ``metrics.json`` store: :meth:`RunConfig.to_dict` with the data
    spec resolved to an absolute path (``data_spec_given``: as typed) and only the data keys
    that apply to that kind of data (no generator settings for a ``.npz`` run)."""
    tree = cfg.to_dict()
    tree["data_spec"] = resolve_data_spec(cfg.data_spec)
    tree["data_spec_given"] = given if given is not None else cfg.data_spec
    if cfg.data_spec == "synthetic":
        drop = set(DATASET_KEYS) | {"task"}
    elif Path(tree["data_spec"]).is_absolute():  # a user's array file
        drop = set(DATASET_KEYS) | set(SYNTHETIC_KEYS)
    else:  # a built-in dataset
        drop = set(SYNTHETIC_KEYS)
    tree["data"] = {k: v for k, v in tree["data"].items() if k not in drop}
    for dotted in PATH_KEYS:
        section, _, key = dotted.partition(".")
        if key in tree.get(section, {}):
            tree[section][key] = absolute_path_value(dotted, tree[section][key])
    return tree


def config_yaml(cfg: RunConfig, given: Optional[str] = None) -> str:
    """The fully resolved configuration as a ``--config`` file: a comment line with the
    method and data, then ``seed``, every section and ``method`` (its hyperparameters), with
    the data keys that apply to that kind of data (:func:`record`)."""
    tree = record(cfg, given)
    body = {key: tree[key] for key in ("seed", *SECTIONS, "method")}
    head = f"# mmbalance train --method {cfg.method} --data {tree['data_spec']}: every value, resolved\n"
    return head + yaml.safe_dump(body, sort_keys=False)


SECTIONS = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "trainer": TrainerConfig}


def parse_set_items(items: Sequence[str]) -> Dict[str, Any]:
    """``["a.b=1", ...]`` -> ``{"a.b": 1}``; values are read as YAML scalars or lists."""
    out: Dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r} is not key=value")
        out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    return out


def flatten(tree: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """Nested YAML mapping -> dotted keys. ``method`` sections stay one level deep."""
    flat: Dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def load_yaml(path: str | Path) -> Dict[str, Any]:
    """Reads a config file into dotted keys."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory; pass a YAML file")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read ({type(exc).__name__}: {exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(tree, Mapping):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    return flatten(tree)


def build_config(method: str, data_spec: str = "synthetic", overrides: Optional[Mapping[str, Any]] = None,
                 hyperparameters: Optional[type] = None) -> RunConfig:
    """Applies dotted ``overrides`` to the code defaults and type-checks every value.

    Args:
        method: registered method name.
        data_spec: ``synthetic``, a dataset name, or a path to a ``.npz``/``.h5`` file.
        overrides: dotted key -> value (YAML first, then ``--set``, merged by the caller).
        hyperparameters: the method's ``Hyperparameters`` dataclass.
    """
    cfg = RunConfig(method=method, data_spec=data_spec)
    method_values: Dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        section, _, name = key.partition(".")
        if key == "seed":
            cfg.seed = _coerce(value, int, key)
        elif section == "method" and name:
            method_values[name] = value
        elif section in SECTIONS and name:
            target = getattr(cfg, section)
            setattr(target, name, _coerce_field(target, name, value, key))
        else:
            valid = ["seed"] + [f"{s}.<key>" for s in SECTIONS] + ["method.<key>"]
            raise ConfigError(f"unknown key {key!r}; {_suggest_key(key, hyperparameters)}valid: {', '.join(valid)}")
    if hyperparameters is not None:
        hp = hyperparameters()
        for name, value in method_values.items():
            setattr(hp, name, _coerce_field(hp, name, value, f"method.{name}", label=f"method {method!r}"))
        cfg.hparams = hp
    _check_ranges(cfg)
    return cfg


def all_keys(hyperparameters: Optional[type] = None) -> list:
    """Every dotted key ``--set`` accepts: ``seed``, each section's fields and, given the
    method's ``Hyperparameters``, ``method.<field>``."""
    keys = ["seed"] + [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
    if hyperparameters is not None:
        keys += [f"method.{f.name}" for f in dataclasses.fields(hyperparameters)]
    return keys


def _suggest_key(key: str, hyperparameters: Optional[type]) -> str:
    """``did you mean ...? `` for a key whose section is unknown: the closest whole key
    (``trainr.max_epochs`` -> ``trainer.max_epochs``), else the closest section."""
    section, _, name = key.partition(".")
    close = closest(section, [*SECTIONS, "method"]) if name else None
    if close is None:
        return did_you_mean(key, all_keys(hyperparameters))
    fields = [k.partition(".")[2] for k in all_keys(hyperparameters) if k.startswith(close + ".")]
    return f"did you mean {close}.{closest(name, fields) or '<key>'}? "


def _coerce_field(obj: Any, name: str, value: Any, key: str, label: str = "") -> Any:
    hints = typing.get_type_hints(type(obj))
    if name not in hints:
        own = type(obj).__dict__.get("__annotations__", {})  # a section's own keys first, inherited ones after
        names = [f.name for f in dataclasses.fields(obj)]  # a method's: in declaration order
        if not label:
            names = sorted(names, key=lambda n: n not in own)
        valid = ", ".join(names) or "(none)"
        section = key.rsplit(".", 1)[0]
        where = f" for {label}" if label else ""
        hint = did_you_mean(key, [f"{section}.{n}" for n in names])
        raise ConfigError(f"unknown key {key!r}{where}; {hint}valid {section} keys: {valid}")
    return _coerce(value, hints[name], key)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif origin in (list, tuple) or hint in (list, tuple):
        if isinstance(value, (list, tuple)):
            return list(value)
    else:
        return value
    name = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"{key} must be {name}, got {value!r}")


def _check_ranges(cfg: RunConfig) -> None:
    checks = [
        ("data.batch_size", cfg.data.batch_size >= 1), ("data.n", cfg.data.n >= 10),
        ("data.num_workers", cfg.data.num_workers >= 0), ("optim.lr", cfg.optim.lr > 0),
        ("optim.weight_decay", cfg.optim.weight_decay >= 0), ("optim.grad_clip", cfg.optim.grad_clip >= 0),
        ("optim.warmup_epochs", cfg.optim.warmup_epochs >= 0), ("trainer.max_epochs", cfg.trainer.max_epochs >= 1),
        ("optim.step_size", cfg.optim.step_size >= 1), ("optim.step_gamma", cfg.optim.step_gamma > 0),
        ("trainer.devices", cfg.trainer.devices >= 1), ("trainer.patience", cfg.trainer.patience >= 0),
        ("trainer.checkpoint_every_n_steps", cfg.trainer.checkpoint_every_n_steps >= 0),
        ("trainer.checkpoint_every_minutes", cfg.trainer.checkpoint_every_minutes >= 0),
    ]
    for key, ok in checks:
        if not ok:
            section, name = key.split(".")
            raise ConfigError(f"{key} is out of range: {getattr(getattr(cfg, section), name)!r}")
    for key in ("shared", "unique1", "unique2"):
        if not 0 <= getattr(cfg.data, key) <= 1:
            raise ConfigError(f"data.{key} must lie in [0, 1], got {getattr(cfg.data, key)}")
    if cfg.data.shared + cfg.data.unique1 + cfg.data.unique2 > 1 + 1e-9:
        raise ConfigError("data.shared + data.unique1 + data.unique2 must not exceed 1")
    for key, valid in (("optim.name", ("adam", "adamw", "sgd")), ("model.regression_loss", ("mse", "l1")),
                       ("optim.schedule", ("cosine", "constant", "step")),
                       ("optim.implementation", ("foreach", "for_loop", "fused"))):
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in valid:
            raise ConfigError(f"{key} {value!r} is unknown; {did_you_mean(value, valid)}valid: {', '.join(valid)}")
    if cfg.optim.implementation == "fused" and cfg.optim.name == "sgd":
        raise ConfigError(FUSED_SGD)
