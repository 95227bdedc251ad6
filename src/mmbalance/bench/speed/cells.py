"""The cells of ``bench speed``: settings (a model and a batch), method variants, and a
runner that performs one training step of a cell with :func:`mmbalance.engine.train_step`."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import math
import re
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ...config import OptimConfig
from ...errors import ConfigError
from ...engine import build_optimizer, train_step
from ...methods import get_method
from ...methods.mcr import MCR
from ...models import MultimodalModel, build_encoder
from ...models.conformer import BackboneConformer, conformer
from ...models.pretrained import PretrainedEncoder
from ...types import Batch, LossTerms, ModelOutput

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
#: the paper's Conformer on top of every branch (configs/cremad/conformer): 50-d bottleneck, 512 wide, 5 blocks
_CONFORMER = (("feature_dim", 512), ("hidden", 50), ("layers", 5), ("dropout", 0.1))
_CONFORMER_QUICK = (("feature_dim", 32), ("hidden", 8), ("layers", 1), ("dropout", 0.1))

SETTINGS: Dict[str, Setting] = {
    "synthetic": Setting("synthetic", "(a) synthetic MLP",
                         (("x1", (100,), "mlp"), ("x2", (100,), "mlp")), _MLP, 5, 64),
    "cremad": Setting("cremad", "(b) ResNet-18 audio+video, CREMA-D sizes",
                      (("audio", (257, 188), "resnet18_audio"), ("video", (3, 3, 224, 224), "resnet18_video")),
                      (("base_width", 64),), 6, 8),
    "mosei": Setting("mosei", "(c) 5-layer sequence Transformer, MOSEI sizes",
                     (("video", (50, 35), "transformer_seq"), ("audio", (50, 74), "transformer_seq"),
                      ("text", (50, 300), "transformer_seq")), _SEQ, 2, 32),
    "cremad_conformer": Setting(
        "cremad_conformer", "(d) the paper's CREMA-D Conformer model: wav2vec2-large-robust (first 12 layers, random "
        "init) -> Conformer on 3 s of 16 kHz audio, face features (150 x 1408) -> Conformer",
        (("audio", (48000,), "wav2vec2_large_robust12_conformer"), ("video", (150, 1408), "conformer")),
        _CONFORMER, 6, 8),
    "sthsth_swin": Setting(
        "sthsth_swin", "(e) the paper's Something-Something model: a Video Swin-T per modality (video, flow), "
        "16 x 224 x 224 clips",
        (("video", (3, 16, 224, 224), "swin3d"), ("flow", (3, 16, 224, 224), "swin3d")),
        (("base_width", 64),), 174, 16),
}
QUICK_SETTINGS: Dict[str, Setting] = {
    "synthetic": SETTINGS["synthetic"],
    "cremad": Setting("cremad", "(b) ResNet-18 audio+video, --quick sizes (width 16, 64 px)",
                      (("audio", (64, 48), "resnet18_audio"), ("video", (3, 3, 64, 64), "resnet18_video")),
                      (("base_width", 16),), 6, 8),
    "mosei": Setting("mosei", "(c) sequence Transformer, --quick sizes (2 layers, 20 steps)",
                     (("video", (20, 35), "transformer_seq"), ("audio", (20, 74), "transformer_seq"),
                      ("text", (20, 300), "transformer_seq")), _SEQ_QUICK, 2, 32),
    "sthsth_swin": Setting("sthsth_swin", "(e) Video Swin, --quick sizes (width 16, 4 x 32 x 32 clips)",
                           (("video", (3, 4, 32, 32), "swin3d"), ("flow", (3, 4, 32, 32), "swin3d")),
                           (("base_width", 16),), 174, 4),
}
if importlib.util.find_spec("transformers") is not None:  # the 'pretrained' extra (no import here)
    QUICK_SETTINGS["cremad_conformer"] = Setting(
        "cremad_conformer", "(d) wav2vec2 -> Conformer + features -> Conformer, --quick sizes (a 2-layer 64-wide "
        "wav2vec2, 0.5 s audio, 20 x 32 features)",
        (("audio", (8000,), "wav2vec2_small_conformer"), ("video", (20, 32), "conformer")), _CONFORMER_QUICK, 6, 4)
#: the settings whose step takes seconds on a CPU (fewer rounds by default)
HEAVY = ("cremad", "cremad_conformer", "sthsth_swin")
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


# ----------------------------------------------------------------------------- bench-only encoders
#: facebook/wav2vec2-large-robust's architecture (its config.json), for a randomly initialized copy
#: of the real size: the authors keep its first 12 of 24 layers (kkontras/MCR Audio_Wav2Vec). Layer
#: drop (0.1 in the checkpoint) is off, so every step runs all 12 layers and times compare.
WAV2VEC2_LARGE_ROBUST = dict(
    hidden_size=1024, num_hidden_layers=12, num_attention_heads=16, intermediate_size=4096,
    conv_dim=(512,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_bias=True,
    feat_extract_norm="layer", do_stable_layer_norm=True, num_conv_pos_embeddings=128,
    num_conv_pos_embedding_groups=16, hidden_dropout=0.1, attention_dropout=0.1, activation_dropout=0.0,
    feat_proj_dropout=0.1, layerdrop=0.0, mask_time_prob=0.05)
#: --quick: 2 layers 64 wide, 80 samples a step (wav2vec2's 320 would leave 25 steps of 0.5 s)
WAV2VEC2_SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                      conv_dim=(32, 32, 32), conv_kernel=(10, 3, 3), conv_stride=(5, 4, 4), num_conv_pos_embeddings=16,
                      num_conv_pos_embedding_groups=4, layerdrop=0.0)


class RandomBackbone(PretrainedEncoder):
    """:class:`~mmbalance.models.pretrained.PretrainedEncoder` (the same ``sequence`` and
    ``forward``) around a backbone built in memory, not read from a directory."""

    def __init__(self, backbone: torch.nn.Module) -> None:
        torch.nn.Module.__init__(self)
        self.backbone = backbone
        self.backbone.train()
        self.input_name, self.video_model = backbone.main_input_name, False
        self.out_dim = int(backbone.config.hidden_size)


def _random_wav2vec2_conformer(sizes: Dict[str, object]) -> Callable:
    def factory(shape: Tuple[int, ...], cfg) -> torch.nn.Module:
        """``pretrained_conformer`` as training builds it (a :class:`BackboneConformer`), its
        wav2vec2 randomly initialized from ``sizes``: no checkpoint needed."""
        try:
            import transformers
        except ImportError:
            raise ConfigError("bench speed setting cremad_conformer needs transformers: "
                              "pip install 'mmbalance[pretrained]'") from None
        backbone = RandomBackbone(transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(**sizes)))
        return BackboneConformer(backbone, conformer((1, backbone.out_dim), cfg))
    return factory


#: encoders only ``bench speed`` builds (looked up before the registry)
BENCH_ENCODERS: Dict[str, Callable] = {
    "wav2vec2_large_robust12_conformer": _random_wav2vec2_conformer(WAV2VEC2_LARGE_ROBUST),
    "wav2vec2_small_conformer": _random_wav2vec2_conformer(WAV2VEC2_SMALL),
}


def build_model(setting: Setting, seed: int = 0) -> MultimodalModel:
    """The setting's model (registry encoders, or :data:`BENCH_ENCODERS`; ``concat_linear`` fusion
    unless the setting's ``model_cfg`` names another ``fusion``), seeded."""
    torch.manual_seed(seed)
    cfg = SimpleNamespace(**dict(setting.model_cfg))
    encoders = {m: BENCH_ENCODERS[enc](shape, cfg) if enc in BENCH_ENCODERS else
                build_encoder(enc, shape, cfg, modality=m) for m, shape, enc in setting.modalities}
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
class SpeedVariant:
    """One row of the table: a registered method (or ``mcr_reencode``) with fixed
    hyperparameters and, for MCR, an optional ``chunk_size`` on its regularizer."""

    label: str
    method: str
    hparams: Tuple[Tuple[str, object], ...] = ()
    chunk_size: Optional[int] = None
    epoch: int = 0  # the epoch the method is told it is in (on_epoch_start) before its steps are timed

    def describe(self) -> str:
        items = list(self.hparams) + [(k, v) for k, v in (("chunk_size", self.chunk_size), ("epoch", self.epoch)) if v]
        return ", ".join(f"{k}={v}" for k, v in items)


def _mcr(label: str, permutations: int = 32, **extra) -> SpeedVariant:
    chunk = extra.pop("chunk_size", None)
    method = extra.pop("method", "mcr")
    return SpeedVariant(label, method, (("num_permutations", permutations),) + tuple(sorted(extra.items())), chunk)


#: The table's methods, in report order.
METHODS: Tuple[SpeedVariant, ...] = (
    SpeedVariant("joint", "joint"), SpeedVariant("multiloss", "multiloss"), SpeedVariant("ogm_ge", "ogm_ge"),
    SpeedVariant("mlb", "mlb"), SpeedVariant("agm", "agm"),
    _mcr("mcr_p1", 1), _mcr("mcr_p8", 8), _mcr("mcr_p32", 32),
    _mcr("mcr_input_noise_p4", 4, perturbation="input_noise"),
    _mcr("mcr_input_zero", 1, perturbation="input_zero"),
    _mcr("mcr_reencode", 32, method="mcr_reencode"),
    # the field's other balancing methods; ume trains nothing after its stages, so it has no step
    SpeedVariant("umt", "umt"), SpeedVariant("cml", "cml"), SpeedVariant("mbsd", "mbsd"),
    SpeedVariant("mmpareto", "mmpareto"), SpeedVariant("gblending", "gblending"), SpeedVariant("opm", "opm"),
    SpeedVariant("lfm", "lfm"), SpeedVariant("dnr", "dnr"),
    # reconboost is timed in its phase 1 (epoch 0, one learner boosted); reconboost_phase2 (by name)
    SpeedVariant("mla", "mla"), SpeedVariant("reconboost", "reconboost"),
    # valuation's step is joint's (its copies change which rows an epoch has, not the step)
    SpeedVariant("valuation", "valuation"), SpeedVariant("amco", "amco"),
)
#: Methods timed only when named (``--methods``): greedy needs encoders with stages (intermediate
#: fusion), which the synthetic and MOSEI settings' encoders are not (a setting whose model does
#: not meet a method's requirements skips it with one line, :func:`unmet`); mmcosine, mslr and
#: pmr complete the methods table's cost column without lengthening every default run;
#: reconboost_phase2 is ReconBoost's phase 2 (epoch 12: stage 1's first at 4 + 4 epochs a stage).
BY_NAME: Tuple[SpeedVariant, ...] = (SpeedVariant("greedy", "greedy"), SpeedVariant("mmcosine", "mmcosine"),
                                     SpeedVariant("mslr", "mslr"), SpeedVariant("pmr", "pmr"),
                                     SpeedVariant("reconboost_phase2", "reconboost", epoch=12))
#: Extra cells for ``cost_vs_permutations.png`` (timed with the table, in the same rounds).
PERMUTATION_SWEEP: Tuple[SpeedVariant, ...] = (
    _mcr("mcr_p128", 128), _mcr("mcr_p128_chunk512", 128, chunk_size=512),
    *(_mcr(f"mcr_input_noise_p{p}", p, perturbation="input_noise") for p in (1, 2)))
#: Cells of the M sweep: every subset vs singletons only (``max_subset_size=1``).
MODALITY_VARIANTS: Tuple[SpeedVariant, ...] = (
    SpeedVariant("multiloss", "multiloss"),
    _mcr("mcr_p32", 32),
    _mcr("mcr_p32_singletons", 32, max_subset_size=1),
)


_PATTERNS = (
    (re.compile(r"mcr_p(\d+)(?:_chunk(\d+))?(_singletons)?(_mipd_only)?(_ceb)?(_compile)?"),
     lambda p, c, s, o, b, k: _mcr(
         f"mcr_p{p}" + (f"_chunk{c}" if c else "") + (s or "") + (o or "") + (b or "") + (k or ""), int(p),
         **({"chunk_size": int(c)} if c else {}), **({"max_subset_size": 1} if s else {}),
         **({"contrastive_weight": 0.0} if o else {}), **({"ceb_weight": 1.0} if b else {}),
         **({"compile": True} if k else {}))),
    (re.compile(r"mcr_input_noise_p(\d+)"), lambda p: _mcr(f"mcr_input_noise_p{p}", int(p),
                                                            perturbation="input_noise")),
)


def variant_by_label(label: str) -> SpeedVariant:
    """A table label, or a pattern: ``mcr_p<P>[_chunk<N>][_singletons][_mipd_only][_ceb][_compile]``
    (``_mipd_only``: contrastive_weight 0, the MIPD's own cost; ``_ceb``: ceb_weight 1, as the
    Conformer and Swin configs run MCR; ``_compile``: the MIPD under ``torch.compile``, compiled
    during the warm-up), ``mcr_input_noise_p<P>``."""
    for v in METHODS + BY_NAME + PERMUTATION_SWEEP + MODALITY_VARIANTS:
        if v.label == label:
            return v
    for pattern, make in _PATTERNS:
        match = pattern.fullmatch(label)
        if match and all(int(g) >= 1 for g in match.groups() if g and g.isdigit()):
            return make(*match.groups())
    known = ", ".join(v.label for v in METHODS + BY_NAME + PERMUTATION_SWEEP + MODALITY_VARIANTS)
    raise KeyError(f"unknown speed benchmark method {label!r}; valid: {known}, or mcr_p<P>[_chunk<N>]"
                   "[_singletons][_mipd_only][_ceb][_compile], mcr_input_noise_p<P>")


def _method_class(variant: SpeedVariant):
    return MCRReencode if variant.method == "mcr_reencode" else get_method(variant.method)


def unmet(variant: SpeedVariant, model: MultimodalModel) -> Optional[str]:
    """Why ``variant``'s method cannot run on ``model`` (its ``check_requirements`` line), or None."""
    try:
        _method_class(variant).check_requirements(model)
    except ConfigError as err:
        return str(err)
    return None


def own_model(variant: SpeedVariant) -> bool:
    """True for a method that changes its model (intermediate fusion installs MMTM between the
    encoders' stages; a shared-head method gives it its ``fusion``): it is timed on a model of
    its own, built with the same seed."""
    cls = _method_class(variant)
    return "stagewise_encoders" in cls.requires or getattr(cls, "fusion", None) is not None


def build_method(variant: SpeedVariant, model: MultimodalModel):
    """The method object of ``variant`` on ``model`` (its own heads bound to the model)."""
    cls = _method_class(variant)
    fields = {f.name for f in dataclasses.fields(cls.Hyperparameters)}
    hp = {k: v for k, v in variant.hparams if k in fields}
    method = cls(model, cls.Hyperparameters(**hp))
    if variant.chunk_size is not None:
        method.regularizer.mipd.chunk_size = variant.chunk_size
    return method


def mipd_terms(variant: SpeedVariant, modalities: Sequence[str]) -> int:
    """Number of MIPD terms (subsets S) of an MCR variant, 0 for other methods."""
    if not variant.method.startswith("mcr"):
        return 0
    hp = dict(variant.hparams)
    largest = len(modalities) - 1
    if hp.get("max_subset_size") is not None:
        largest = min(largest, int(hp["max_subset_size"]))
    return sum(math.comb(len(modalities), r) for r in range(1, largest + 1))


def fused_rows(variant: SpeedVariant, setting: Setting) -> int:
    """Rows given to ``model.fuse`` by the MIPD in one step (terms x B x P', P' = 1 for zero)."""
    hp = dict(variant.hparams)
    draws = 1 if hp.get("perturbation") == "input_zero" else int(hp.get("num_permutations", 0))
    return mipd_terms(variant, setting.names) * setting.batch * draws


# ----------------------------------------------------------------------------- one step
@dataclass
class Runner:
    """A method, its optimizer and a batch: :meth:`step` is one training step as the loop
    does it (:func:`mmbalance.engine.train_step`)."""

    setting: Setting
    variant: SpeedVariant
    method: torch.nn.Module
    optimizer: torch.optim.Optimizer
    batch: Batch
    device: torch.device
    autocast_dtype: Optional[torch.dtype] = None
    regions: bool = False  # wrap the phases in profiler ranges

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def step(self) -> None:
        train_step(self.method, self.batch, self.optimizer, autocast=self.autocast_dtype, regions=self.regions,
                   on_nonfinite=_raise_nonfinite(self.variant.label))

def make_optimizer(method, lr: float = 1e-4, weight_decay: float = 1e-4) -> torch.optim.Optimizer:
    """Adam over the method's parameter groups, as the training loop builds it
    (:func:`mmbalance.engine.build_optimizer`, ``optim.name=adam``)."""
    return build_optimizer(method.optimizer_groups(), OptimConfig(name="adam", lr=lr, weight_decay=weight_decay))


def _raise_nonfinite(label: str) -> Callable[[LossTerms], None]:
    def fail(loss: LossTerms) -> None:
        raise FloatingPointError(f"{label}: non-finite loss")
    return fail


def make_runner(setting: Setting, variant: SpeedVariant, device: torch.device, precision: str = "fp32",
                model: Optional[MultimodalModel] = None, seed: int = 0) -> Runner:
    """Builds model (unless shared), method, optimizer and batch of one cell."""
    model = model if model is not None else build_model(setting, seed).to(device)
    model.train()
    method = build_method(variant, model).to(device)
    method.train()
    if variant.epoch:  # a step that depends on the epoch (reconboost's phases) is timed there
        method.on_epoch_start(variant.epoch)
    dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]
    return Runner(setting, variant, method, make_optimizer(method), make_batch(setting, device), device, dtype)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)

