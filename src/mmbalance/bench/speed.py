"""``mmbalance bench speed``: what each balancing method costs per training step.

Every method is driven exactly as the training loop drives it, without Lightning around
it: ``optimizer.zero_grad`` -> ``method(inputs)`` -> ``method.training_loss`` -> the
loop's finiteness check -> ``loss.total.backward()`` -> ``method.after_backward()`` ->
``optimizer.step()`` (Adam over ``method.param_groups()``, as
:func:`mmbalance.training.optim.build_optimizer` builds it). The same function runs every
method, on one random batch per setting.

Timing: all cells of a setting live in one process (one model, one optimizer per method)
and are timed in interleaved rounds (the order rotates every round), after warm-up
rounds; a sample is the mean of enough consecutive steps to last ``min_sample_s``, and a
cell's figure is the median of its samples. Memory: each cell again in a fresh process
(forked from a server that has only imported torch and mmbalance), a few steps, then the
process's peak resident set (CPU) or ``torch.cuda.max_memory_allocated`` (GPU).

Settings (``SETTINGS``; ``--quick`` shrinks (b) and (c) so the whole command takes a
minute or two):

- ``synthetic`` (a): the synthetic MLP model, two 100-d modalities, 5 classes, batch 64.
- ``cremad`` (b): ResNet-18 audio (257 x 188 log spectrogram) + ResNet-18 video
  (3 frames of 3 x 224 x 224), 6 classes, batch 8 (``--batch 32`` on a GPU).
- ``mosei`` (c): the 5-layer sequence Transformer (width 40, feed-forward 2048) on video
  (50 x 35), audio (50 x 74) and text (50 x 300), batch 32; binary classification so that
  the classification-only baselines (ogm_ge, agm) run too.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from ..methods import get_method
from ..methods.mcr import MCR
from ..models import MultimodalModel, build_encoder
from ..types import Batch, LossTerms, ModelOutput

CSV_COLUMNS = ["setting", "method", "ms_per_step", "peak_memory_mb"]
DETAIL_COLUMNS = ["setting", "method", "base_method", "hyperparameters", "batch", "modalities", "mipd_terms",
                  "fused_rows", "ms_per_step", "ms_p25", "ms_p75", "cpu_ms_per_step", "samples", "steps_per_sample",
                  "peak_memory_mb", "base_memory_mb", "step_memory_mb", "saved_for_backward_mb"]
MODALITY_COLUMNS = ["setting", "modalities", "method", "mipd_terms", "ms_per_step", "peak_memory_mb"]
Log = Callable[[str], None]


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Setting:
    """A model and a batch: modality -> (sample shape, encoder name), the encoder options
    (``ModelConfig`` fields the factories read), classes and batch size."""

    name: str
    title: str
    modalities: Tuple[Tuple[str, Tuple[int, ...], str], ...]
    model_cfg: Tuple[Tuple[str, object], ...]
    num_classes: int
    batch: int

    @property
    def names(self) -> List[str]:
        return [m for m, _, _ in self.modalities]

    def describe(self) -> str:
        shapes = ", ".join(f"{m} {'x'.join(map(str, s))} ({e})" for m, s, e in self.modalities)
        return f"{self.title}: {shapes}; {self.num_classes} classes, batch {self.batch}"


_MLP = (("feature_dim", 100), ("hidden", 100), ("layers", 2), ("dropout", 0.0))
_SEQ = (("feature_dim", 40), ("hidden", 2048), ("layers", 5), ("dropout", 0.1))
_SEQ_QUICK = (("feature_dim", 40), ("hidden", 256), ("layers", 2), ("dropout", 0.1))

SETTINGS: Dict[str, Setting] = {
    "synthetic": Setting("synthetic", "(a) synthetic MLP",
                         (("x1", (100,), "mlp"), ("x2", (100,), "mlp")), _MLP, 5, 64),
    "cremad": Setting("cremad", "(b) ResNet-18 audio+video, CREMA-D sizes",
                      (("audio", (257, 188), "resnet18_audio"), ("video", (3, 3, 224, 224), "resnet18_video")),
                      (("base_width", 64),), 6, 8),
    "mosei": Setting("mosei", "(c) 5-layer sequence Transformer, MOSEI sizes",
                     (("video", (50, 35), "transformer_seq"), ("audio", (50, 74), "transformer_seq"),
                      ("text", (50, 300), "transformer_seq")), _SEQ, 2, 32),
}
QUICK_SETTINGS: Dict[str, Setting] = {
    "synthetic": SETTINGS["synthetic"],
    "cremad": Setting("cremad", "(b) ResNet-18 audio+video, --quick sizes (width 16, 64 px)",
                      (("audio", (64, 48), "resnet18_audio"), ("video", (3, 3, 64, 64), "resnet18_video")),
                      (("base_width", 16),), 6, 8),
    "mosei": Setting("mosei", "(c) sequence Transformer, --quick sizes (2 layers, 20 steps)",
                     (("video", (20, 35), "transformer_seq"), ("audio", (20, 74), "transformer_seq"),
                      ("text", (20, 300), "transformer_seq")), _SEQ_QUICK, 2, 32),
}
#: Settings swept over M (``cost_vs_modalities.png``) and the modality counts.
MODALITY_SWEEP = {"synthetic": (2, 3, 4), "mosei": (2, 3, 4)}


def modality_setting(base: Setting, count: int) -> Setting:
    """``base`` with ``count`` modalities. Synthetic: x1..xM, all 100-d MLPs. Sequence:
    V-T (M = 2, the paper's pair), V-A-T (3), V-A-T plus a second audio-like stream (4)."""
    mods = list(base.modalities)
    if base.name == "mosei":
        by_name = {m[0]: m for m in mods}
        audio = by_name["audio"]
        choices = {2: [by_name["video"], by_name["text"]], 3: [by_name["video"], audio, by_name["text"]],
                   4: [by_name["video"], audio, by_name["text"], ("audio2", audio[1], audio[2])]}
        if count not in choices:
            raise ValueError(f"the sequence setting has 2, 3 or 4 modalities, not {count}")
        return dataclasses.replace(base, modalities=tuple(choices[count]))
    first = mods[0]
    return dataclasses.replace(base, modalities=tuple((f"x{i + 1}", first[1], first[2]) for i in range(count)))


def build_model(setting: Setting, seed: int = 0) -> MultimodalModel:
    """The setting's model (registry encoders; ``concat_linear`` fusion unless the setting's
    ``model_cfg`` names another ``fusion``), seeded."""
    torch.manual_seed(seed)
    cfg = SimpleNamespace(**dict(setting.model_cfg))
    encoders = {m: build_encoder(enc, shape, cfg, modality=m) for m, shape, enc in setting.modalities}
    return MultimodalModel(encoders, setting.num_classes, fusion=getattr(cfg, "fusion", "concat_linear"))


def make_batch(setting: Setting, device: torch.device, seed: int = 1) -> Batch:
    """One random batch of the setting's shapes (labels cover the classes)."""
    g = torch.Generator().manual_seed(seed)
    inputs = {m: torch.randn((setting.batch, *shape), generator=g).to(device) for m, shape, _ in setting.modalities}
    labels = (torch.arange(setting.batch) % setting.num_classes)[torch.randperm(setting.batch, generator=g)]
    return Batch(inputs, labels.to(device))


# ----------------------------------------------------------------------------- methods
class MCRReencode(MCR):
    """Reference only (not registered): MCR as the authors' code computes it, with a SECOND
    pass of the whole batch through the model (in eval mode, gradients kept) whose features
    feed the regularizer. Same loss terms as :class:`~mmbalance.methods.MCR`; what it adds is
    the encoders' second forward and backward, the cost that latent permutations avoid."""

    name = "mcr_reencode"
    description = "MCR with the authors' second encoder pass (benchmark reference only)"

    def training_loss(self, batch: Batch, out: ModelOutput) -> LossTerms:
        was_training = self.model.training
        self.model.eval()
        try:
            second = self.model(batch.inputs)
        finally:
            self.model.train(was_training)
        terms = {"task": self.task_loss(out.logits, batch.labels)}
        for m, loss in self.unimodal_losses(out, batch.labels).items():
            terms[f"unimodal/{m}"] = self.hparams.unimodal_weight * loss
        latent = ModelOutput(logits=out.logits, unimodal_logits=out.unimodal_logits, features=second.features)
        reg = self.regularizer(self.model, latent, batch.labels, inputs=batch.inputs)
        terms.update(reg.terms)
        return LossTerms.from_terms(terms, reg.logs)


@dataclass(frozen=True)
class Variant:
    """One row of the table: a registered method (or ``mcr_reencode``) with fixed
    hyperparameters and, for MCR, an optional ``chunk_size`` on its regularizer."""

    label: str
    method: str
    hparams: Tuple[Tuple[str, object], ...] = ()
    chunk_size: Optional[int] = None

    def describe(self) -> str:
        items = list(self.hparams) + ([("chunk_size", self.chunk_size)] if self.chunk_size else [])
        return ", ".join(f"{k}={v}" for k, v in items)


def _mcr(label: str, permutations: int = 32, **extra) -> Variant:
    chunk = extra.pop("chunk_size", None)
    method = extra.pop("method", "mcr")
    return Variant(label, method, (("num_permutations", permutations),) + tuple(sorted(extra.items())), chunk)


#: The table's methods (the issue's list), in report order.
METHODS: Tuple[Variant, ...] = (
    Variant("joint", "joint"), Variant("multiloss", "multiloss"), Variant("ogm_ge", "ogm_ge"),
    Variant("mlb", "mlb"), Variant("agm", "agm"),
    _mcr("mcr_p1", 1), _mcr("mcr_p8", 8), _mcr("mcr_p32", 32),
    _mcr("mcr_input_noise_p4", 4, perturbation="input_noise"),
    _mcr("mcr_input_zero", 1, perturbation="input_zero"),
    _mcr("mcr_reencode", 32, method="mcr_reencode"),
)
#: Extra cells for ``cost_vs_permutations.png`` (timed with the table, in the same rounds).
PERMUTATION_SWEEP: Tuple[Variant, ...] = (
    _mcr("mcr_p128", 128),
    _mcr("mcr_p128_chunk512", 128, chunk_size=512),
    _mcr("mcr_input_noise_p1", 1, perturbation="input_noise"),
    _mcr("mcr_input_noise_p2", 2, perturbation="input_noise"),
)
#: Cells of the M sweep: every subset vs singletons only (``max_subset_size=1``).
MODALITY_VARIANTS: Tuple[Variant, ...] = (
    Variant("multiloss", "multiloss"),
    _mcr("mcr_p32", 32),
    _mcr("mcr_p32_singletons", 32, max_subset_size=1),
)


_PATTERNS = (
    (re.compile(r"mcr_p(\d+)(?:_chunk(\d+))?(_singletons)?"), lambda p, c, s: _mcr(
        f"mcr_p{p}" + (f"_chunk{c}" if c else "") + (s or ""), int(p),
        **({"chunk_size": int(c)} if c else {}), **({"max_subset_size": 1} if s else {}))),
    (re.compile(r"mcr_input_noise_p(\d+)"), lambda p: _mcr(f"mcr_input_noise_p{p}", int(p),
                                                            perturbation="input_noise")),
)


def variant_by_label(label: str) -> Variant:
    """A table label, or a pattern: ``mcr_p<P>[_chunk<N>][_singletons]``, ``mcr_input_noise_p<P>``."""
    for v in METHODS + PERMUTATION_SWEEP + MODALITY_VARIANTS:
        if v.label == label:
            return v
    for pattern, make in _PATTERNS:
        match = pattern.fullmatch(label)
        if match and all(int(g) >= 1 for g in match.groups() if g and g.isdigit()):
            return make(*match.groups())
    known = ", ".join(v.label for v in METHODS + PERMUTATION_SWEEP + MODALITY_VARIANTS)
    raise KeyError(f"unknown speed benchmark method {label!r}; valid: {known}, or mcr_p<P>[_chunk<N>]"
                   "[_singletons], mcr_input_noise_p<P>")


def build_method(variant: Variant, model: MultimodalModel):
    """The method object of ``variant`` on ``model`` (its own heads bound to the model)."""
    cls = MCRReencode if variant.method == "mcr_reencode" else get_method(variant.method)
    fields = {f.name for f in dataclasses.fields(cls.Hyperparameters)}
    hp = {k: v for k, v in variant.hparams if k in fields}
    method = cls(model, cls.Hyperparameters(**hp))
    if variant.chunk_size is not None:
        method.regularizer.mipd.chunk_size = variant.chunk_size
    return method


def make_optimizer(method, lr: float = 1e-4, weight_decay: float = 1e-4) -> torch.optim.Optimizer:
    """Adam over the method's parameter groups, each at ``lr * lr_scale`` (what
    ``training.optim.build_optimizer`` builds for ``optim.name=adam``, without importing the
    training package and Lightning into the memory-measuring processes)."""
    groups = []
    for group in method.param_groups():
        group = dict(group)
        group["lr"] = lr * group.pop("lr_scale", 1.0)
        group.pop("base_lr", None)
        groups.append(group)
    return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)


def mipd_terms(variant: Variant, modalities: Sequence[str]) -> int:
    """Number of MIPD terms (subsets S) of an MCR variant, 0 for other methods."""
    if not variant.method.startswith("mcr"):
        return 0
    hp = dict(variant.hparams)
    largest = len(modalities) - 1
    if hp.get("max_subset_size") is not None:
        largest = min(largest, int(hp["max_subset_size"]))
    return sum(math.comb(len(modalities), r) for r in range(1, largest + 1))


def fused_rows(variant: Variant, setting: Setting) -> int:
    """Rows given to ``model.fuse`` by the MIPD in one step (terms x B x P', P' = 1 for zero)."""
    hp = dict(variant.hparams)
    draws = 1 if hp.get("perturbation") == "input_zero" else int(hp.get("num_permutations", 0))
    return mipd_terms(variant, setting.names) * setting.batch * draws


# ----------------------------------------------------------------------------- one step
@dataclass
class Runner:
    """A method, its optimizer and a batch: :meth:`step` is one training step as the loop
    does it."""

    setting: Setting
    variant: Variant
    method: torch.nn.Module
    optimizer: torch.optim.Optimizer
    batch: Batch
    device: torch.device
    autocast_dtype: Optional[torch.dtype] = None
    regions: bool = False  # wrap the phases in profiler ranges

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _region(self, name: str):
        return torch.profiler.record_function(name) if self.regions else nullcontext()

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            with self._region("step/forward"):
                out = self.method(self.batch.inputs)
            with self._region("step/training_loss"):
                loss = self.method.training_loss(self.batch, out)
        if not torch.isfinite(loss.total):  # the loop checks every step (a device sync on GPU)
            raise FloatingPointError(f"{self.variant.label}: non-finite loss")
        with self._region("step/backward"):
            loss.total.backward()
        with self._region("step/after_backward"):
            self.method.after_backward()
        with self._region("step/optimizer"):
            self.optimizer.step()


def make_runner(setting: Setting, variant: Variant, device: torch.device, precision: str = "fp32",
                model: Optional[MultimodalModel] = None, seed: int = 0) -> Runner:
    """Builds model (unless shared), method, optimizer and batch of one cell."""
    model = model if model is not None else build_model(setting, seed).to(device)
    model.train()
    method = build_method(variant, model).to(device)
    method.train()
    dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]
    return Runner(setting, variant, method, make_optimizer(method), make_batch(setting, device), device, dtype)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- timing
@dataclass
class Timing:
    samples: List[float] = field(default_factory=list)  # wall-clock ms per step
    cpu_samples: List[float] = field(default_factory=list)  # this process's CPU ms per step
    steps_per_sample: int = 1

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu_samples) if self.cpu_samples else float("nan")

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def quantile(self, q: float) -> float:
        if len(self.samples) < 2:
            return self.samples[0]
        return statistics.quantiles(self.samples, n=4, method="inclusive")[{0.25: 0, 0.75: 2}[q]]


def time_interleaved(runners: Sequence[Runner], warmup: int, repeats: int, min_sample_s: float,
                     log: Optional[Log] = None, max_steps_per_sample: int = 50) -> List[Timing]:
    """Times all runners in the same rounds: ``warmup`` rounds (discarded; the first fixes
    the steps per sample so that a sample lasts about ``min_sample_s``), then ``repeats``
    rounds, the order rotating by one each round. Returns one :class:`Timing` per runner."""
    timings = [Timing() for _ in runners]
    n = len(runners)
    for r in range(warmup + repeats):
        order = [(i + r) % n for i in range(n)]
        for i in order:
            runner, t = runners[i], timings[i]
            _sync(runner.device)
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(t.steps_per_sample):
                runner.step()
            _sync(runner.device)
            ms = (time.perf_counter() - start) * 1000 / t.steps_per_sample
            cpu_ms = (time.process_time() - cpu_start) * 1000 / t.steps_per_sample
            if r == 0:
                t.steps_per_sample = max(1, min(max_steps_per_sample, int(min_sample_s * 1000 / max(ms, 1e-3))))
            if r >= warmup:
                t.samples.append(ms)
                t.cpu_samples.append(cpu_ms)
        if log:
            phase = f"warm-up {r + 1}/{warmup}" if r < warmup else f"round {r - warmup + 1}/{repeats}"
            log(f"    {phase} done ({_load()})")
    return timings


def _load() -> str:
    try:
        return "load %.2f" % os.getloadavg()[0]
    except OSError:  # pragma: no cover
        return "load n/a"


# ----------------------------------------------------------------------------- memory
def _rss_mb(field_name: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def memory_worker(setting: Setting, variant: Variant, device: str, precision: str, steps: int,
                  threads: Optional[int] = None) -> Dict[str, float]:
    """In a fresh process: builds the cell, runs ``steps`` steps and reports memory (MB).

    CPU: ``peak`` is the process's peak resident set (``VmHWM``: interpreter, torch,
    weights, optimizer state and the steps' activations), ``base`` the resident set after
    building model, method, optimizer and batch. CUDA: ``torch.cuda.max_memory_allocated``
    and the allocation before the first step."""
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    runner = make_runner(setting, variant, dev, precision)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        base = torch.cuda.memory_allocated(dev) / 2**20
        torch.cuda.reset_peak_memory_stats(dev)
    else:
        base = _rss_mb("VmRSS")
    for _ in range(steps):
        runner.step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        peak = _rss_mb("VmHWM")  # this process's own high-water mark of resident memory
    return {"peak_mb": peak, "base_mb": base, "saved_mb": saved_for_backward_mb(runner)}


def saved_for_backward_mb(runner: Runner) -> float:
    """MB of the distinct tensors (parameters excluded) that one step's forward and loss
    save for backward: the activations held at the start of backward. Exact and free of
    allocator noise; a checkpointed chunk's tensors are recomputed, not saved, so they do
    not count (one chunk's worth is alive at a time during backward)."""
    params = {p.untyped_storage().data_ptr() for p in runner.method.parameters()}
    storages: Dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    runner.optimizer.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), runner._autocast():
        out = runner.method(runner.batch.inputs)
        loss = runner.method.training_loss(runner.batch, out)
    loss.total.backward()
    runner.optimizer.zero_grad(set_to_none=True)
    return sum(storages.values()) / 2**20


def measure_memory(setting: Setting, variant: Variant, device: str = "cpu", precision: str = "fp32",
                   steps: int = 2, threads: Optional[int] = None, server=None) -> Dict[str, float]:
    """Peak memory of one cell in a fresh process (see :func:`memory_worker`), forked by
    ``server`` (a :class:`~mmbalance.bench.speed_memory.MemoryServer`; one is started and
    stopped here when None)."""
    from .speed_memory import MemoryServer
    if server is None:
        with MemoryServer() as own:
            return own.measure(setting, variant, device, precision, steps, threads)
    return server.measure(setting, variant, device, precision, steps, threads)


# ----------------------------------------------------------------------------- a group
@dataclass
class CellResult:
    setting: Setting
    variant: Variant
    timing: Timing
    peak_mb: float = float("nan")
    base_mb: float = float("nan")
    saved_mb: float = float("nan")

    def row(self) -> Dict[str, object]:
        return {"setting": self.setting.name, "method": self.variant.label,
                "ms_per_step": f"{self.timing.median:.2f}", "peak_memory_mb": _fmt(self.peak_mb, 1)}

    def detail(self) -> Dict[str, object]:
        return {"setting": self.setting.name, "method": self.variant.label, "base_method": self.variant.method,
                "hyperparameters": self.variant.describe(), "batch": self.setting.batch,
                "modalities": "+".join(self.setting.names),
                "mipd_terms": mipd_terms(self.variant, self.setting.names),
                "fused_rows": fused_rows(self.variant, self.setting),
                "ms_per_step": f"{self.timing.median:.2f}", "ms_p25": f"{self.timing.quantile(0.25):.2f}",
                "ms_p75": f"{self.timing.quantile(0.75):.2f}", "cpu_ms_per_step": _fmt(self.timing.cpu_median, 2),
                "samples": len(self.timing.samples),
                "steps_per_sample": self.timing.steps_per_sample, "peak_memory_mb": _fmt(self.peak_mb, 1),
                "base_memory_mb": _fmt(self.base_mb, 1), "step_memory_mb": _fmt(self.peak_mb - self.base_mb, 1),
                "saved_for_backward_mb": _fmt(self.saved_mb, 2)}


def _fmt(value: float, digits: int) -> str:
    return "" if value != value else f"{value:.{digits}f}"


@dataclass
class Protocol:
    """How many rounds, how long a sample, whether to measure memory."""

    warmup: int = 1
    repeats: int = 5
    min_sample_s: float = 0.25
    memory: bool = True
    memory_steps: int = 2
    device: str = "cpu"
    precision: str = "fp32"
    threads: Optional[int] = None


def run_group(setting: Setting, variants: Sequence[Variant], protocol: Protocol, log: Log,
              tag: Optional[str] = None, server=None) -> List[CellResult]:
    """Times ``variants`` on one shared model of ``setting`` (interleaved), then measures
    each one's memory in a fresh process; one progress line per cell."""
    tag = tag or setting.name
    device = torch.device(protocol.device)
    model = build_model(setting).to(device)
    runners = [make_runner(setting, v, device, protocol.precision, model=model) for v in variants]
    log(f"[{tag}] timing {len(runners)} methods: {protocol.warmup} warm-up + {protocol.repeats} interleaved "
        f"rounds ({_load()})")
    timings = time_interleaved(runners, protocol.warmup, protocol.repeats, protocol.min_sample_s, log)
    results = []
    for v, t in zip(variants, timings):
        results.append(CellResult(setting, v, t))
        log(f"[{tag}] {v.label:22s} {t.median:10.2f} ms/step  (IQR {t.quantile(0.25):.2f}-{t.quantile(0.75):.2f}, "
            f"{len(t.samples)} x {t.steps_per_sample} steps)")
    del runners, model
    if protocol.memory:
        for cell in results:
            mem = measure_memory(setting, cell.variant, protocol.device, protocol.precision, protocol.memory_steps,
                                 protocol.threads, server)
            cell.peak_mb, cell.base_mb, cell.saved_mb = mem["peak_mb"], mem["base_mb"], mem["saved_mb"]
            log(f"[{tag}] {cell.variant.label:22s} peak {cell.peak_mb:9.1f} MB  (before the first step "
                f"{cell.base_mb:.1f} MB; saved for backward {cell.saved_mb:.1f} MB)")
    return results


# ----------------------------------------------------------------------------- the command
@dataclass
class SpeedConfig:
    """What ``bench speed`` runs."""

    out: Path
    quick: bool = False
    settings: Tuple[str, ...] = ("synthetic", "cremad", "mosei")
    methods: Optional[Tuple[str, ...]] = None  # labels; None = METHODS
    sweeps: bool = True
    device: str = "cpu"
    precision: str = "fp32"
    batch: Optional[int] = None
    repeats: Optional[int] = None
    memory: bool = True
    threads: Optional[int] = None  # torch intra-op threads; None = torch's default


def protocol_for(cfg: SpeedConfig, setting: Setting) -> Protocol:
    heavy = setting.name == "cremad" and not cfg.quick and cfg.device == "cpu"
    repeats = cfg.repeats or (3 if cfg.quick else (5 if heavy else 7))
    return Protocol(warmup=1, repeats=repeats, min_sample_s=0.05 if cfg.quick else 0.25, memory=cfg.memory,
                    device=cfg.device, precision=cfg.precision, threads=cfg.threads)


def resolve_settings(cfg: SpeedConfig) -> List[Setting]:
    table = QUICK_SETTINGS if cfg.quick else SETTINGS
    unknown = [s for s in cfg.settings if s not in table]
    if unknown:
        raise KeyError(f"unknown setting {unknown[0]!r}; valid: {', '.join(table)}")
    chosen = [table[s] for s in cfg.settings]
    if cfg.batch:
        chosen = [dataclasses.replace(s, batch=cfg.batch) for s in chosen]
    return chosen


def run_speed(cfg: SpeedConfig, log: Log = print) -> Dict[str, Path]:
    """Runs the benchmark and writes its files into ``cfg.out``; returns name -> path."""
    from .speed_report import markdown_report, write_csv
    from .speed_plots import plot_modalities, plot_permutations

    from .speed_memory import MemoryServer

    cfg.out.mkdir(parents=True, exist_ok=True)
    if cfg.threads is None and cfg.quick and cfg.device == "cpu":
        cfg = dataclasses.replace(cfg, threads=1)  # a smoke run: immune to a busy second core
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    variants = [variant_by_label(label) for label in cfg.methods] if cfg.methods else list(METHODS)
    extras = [v for v in PERMUTATION_SWEEP if v.label not in {x.label for x in variants}] if cfg.sweeps else []
    env = environment(cfg)
    log(f"bench speed: {len(variants)} methods{f' + {len(extras)} sweep cells' if extras else ''} x "
        f"{len(cfg.settings)} settings on {env['device']} ({env['threads']} threads, {cfg.precision}), "
        f"{'quick sizes' if cfg.quick else 'full sizes'} -> {cfg.out}")
    start = time.perf_counter()
    results: List[CellResult] = []
    modality_results: List[CellResult] = []
    with MemoryServer() as server:
        for setting in resolve_settings(cfg):
            log(f"[{setting.name}] {setting.describe()}")
            results += run_group(setting, variants + extras, protocol_for(cfg, setting), log, server=server)
            write_csv(cfg.out / "speed.csv", CSV_COLUMNS, [r.row() for r in results])
        if cfg.sweeps:
            for base in resolve_settings(cfg):
                for count in MODALITY_SWEEP.get(base.name, ()):
                    setting = modality_setting(base, count)
                    modality_results += run_group(setting, MODALITY_VARIANTS, protocol_for(cfg, setting), log,
                                                  tag=f"{base.name} M={count}", server=server)
    env["load_end"] = os.getloadavg()[0]
    env["seconds"] = round(time.perf_counter() - start, 1)
    paths = {"speed.csv": write_csv(cfg.out / "speed.csv", CSV_COLUMNS, [r.row() for r in results]),
             "speed_details.csv": write_csv(cfg.out / "speed_details.csv", DETAIL_COLUMNS,
                                            [r.detail() for r in results])}
    if modality_results:
        rows = [{"setting": r.setting.name, "modalities": len(r.setting.names), "method": r.variant.label,
                 "mipd_terms": mipd_terms(r.variant, r.setting.names), "ms_per_step": f"{r.timing.median:.2f}",
                 "peak_memory_mb": _fmt(r.peak_mb, 1)} for r in modality_results]
        paths["modalities.csv"] = write_csv(cfg.out / "modalities.csv", MODALITY_COLUMNS, rows)
    paths["speed.md"] = cfg.out / "speed.md"
    paths["speed.md"].write_text(markdown_report(results, modality_results, env))
    if cfg.sweeps:
        paths["cost_vs_permutations.png"] = plot_permutations(results, cfg.out / "cost_vs_permutations.png")
        if modality_results:
            paths["cost_vs_modalities.png"] = plot_modalities(modality_results, cfg.out / "cost_vs_modalities.png")
    (cfg.out / "speed.json").write_text(json.dumps(env, indent=2))
    paths["speed.json"] = cfg.out / "speed.json"
    log(f"bench speed: {env['seconds']:.0f} s")
    return paths


def environment(cfg: SpeedConfig) -> Dict[str, object]:
    """What the numbers were measured on."""
    if cfg.device.startswith("cuda"):
        device = torch.cuda.get_device_name(torch.device(cfg.device))
    else:
        device = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return {"device": device, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "precision": cfg.precision, "quick": cfg.quick,
            "command": " ".join(["mmbalance", *sys.argv[1:]]) if sys.argv and "mmbalance" in sys.argv[0] else "",
            "load_start": os.getloadavg()[0], "started": time.strftime("%Y-%m-%d %H:%M:%S")}


# ----------------------------------------------------------------------------- profile
@contextmanager
def _mcr_regions(method):
    """Profiler ranges around the MCR regularizer's parts (forward only)."""
    reg = getattr(method, "regularizer", None)
    if reg is None:
        yield
        return
    parts = {"mipd": (reg.mipd, "divergences"), "contrastive": (reg.contrastive, "forward"),
             "ceb": (reg.ceb, "forward")}
    for name, (part, attr) in parts.items():
        original = getattr(part, attr)

        def wrapper(*a, __f=original, __n=name, **k):
            with torch.profiler.record_function(f"mcr/{__n}"):
                return __f(*a, **k)
        setattr(part, attr, wrapper)
    try:
        yield
    finally:
        for part, attr in parts.values():
            delattr(part, attr)


def profile_cells(setting: Setting, labels: Sequence[str], out: Path, steps: int = 3, device: str = "cpu",
                  precision: str = "fp32", log: Log = print, row_limit: int = 30) -> List[Path]:
    """torch.profiler over ``steps`` steps of each method (after two warm-up steps): writes
    ``profile_<setting>_<label>.txt`` (phases, then ops by self time) and returns the paths."""
    from torch.profiler import ProfilerActivity, profile

    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    paths = []
    for label in labels:
        runner = make_runner(setting, variant_by_label(label), dev, precision)
        for _ in range(2):
            runner.step()
        runner.regions = True
        with _mcr_regions(runner.method), profile(activities=activities, record_shapes=False) as prof:
            for _ in range(steps):
                runner.step()
            _sync(dev)
        averages = prof.key_averages()
        sort = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
        phases = [e for e in averages if e.key.startswith(("step/", "mcr/"))]
        lines = [f"# {setting.describe()}", f"# {label}: {variant_by_label(label).describe() or 'defaults'}; "
                 f"{steps} profiled steps after 2 warm-up steps ({_load()}, {torch.get_num_threads()} threads)", "",
                 "phase                    ms/step (CPU)" + (" ms/step (device)" if dev.type == "cuda" else "")]
        for e in sorted(phases, key=lambda e: e.key):
            device_ms = f" {getattr(e, 'device_time_total', 0) / 1000 / steps:16.2f}" if dev.type == "cuda" else ""
            lines.append(f"{e.key:24s} {e.cpu_time_total / 1000 / steps:13.2f}{device_ms}")
        lines += ["", averages.table(sort_by=sort, row_limit=row_limit)]
        path = out / f"profile_{setting.name}_{label}.txt"
        path.write_text("\n".join(lines))
        paths.append(path)
        log(f"[{setting.name}] profiled {label} -> {path}")
    return paths
