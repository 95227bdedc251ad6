"""The method interface: how a balancing method plugs into the one training loop.

A method never owns the loop or the optimizer step. The loop calls, in order:
``on_epoch_start`` -> per batch ``forward`` -> ``training_loss`` -> (backward) ->
``after_backward`` -> (optimizer step) ... ``on_validation_end`` -> ``on_epoch_end``.
State that must survive a checkpoint lives in buffers, parameters, or
``get_extra_state``/``set_extra_state`` (both land in the module's ``state_dict``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import OptimConfig
from ..errors import ConfigError
from ..models import MultimodalModel
from ..models.multimodal import stagewise
from ..types import Batch, LossTerms, ModelOutput
from .hparams import log_uniform, searched
from .pipeline import Stage, unimodal_stages

#: How a method's encoders start (``method.init``): ``scratch`` or ``unimodal`` (each encoder
#: and unimodal head first trained alone, as a resumable stage of the same ``train`` call).
INITS = ("scratch", "unimodal")
#: Default of ``method.encoder_lr_scale``: paper A.4 finetunes pretrained encoders at a
#: learning rate one magnitude lower.
ENCODER_LR_SCALE = 0.1

#: How far ``mmbalance tune`` searches the learning rate (``optim.lr``) on either side of the
#: configured one: a factor of 10, log-uniform. At the default Adam rate 1e-3 that is 1e-4 to 1e-2;
#: under SGD at 0.03 (the ``competition-sgd`` preset) 3e-3 to 0.3, so that a rate range chosen for
#: one optimizer is not imposed on another.
LR_SEARCH_FACTOR = 10.0
#: The configured rate a search centres on when none is given: the config's default ``optim.lr``.
DEFAULT_LR = OptimConfig.lr


def learning_rate_range(lr: float):
    """The searched range of ``optim.lr`` around the configured rate ``lr``."""
    if not lr > 0:
        raise ConfigError(f"optim.lr must be positive to search around it, got {lr!r}")
    return log_uniform(lr / LR_SEARCH_FACTOR, lr * LR_SEARCH_FACTOR)

#: What a method may require of its model (``Method.requires``): name -> (check, what is missing).
REQUIREMENTS: Dict[str, tuple] = {
    "classification": (lambda model: model.task == "classification",
                       "classification; the model is a regressor"),
    "shared_head": (lambda model: getattr(model.fusion, "shared", False),
                    "a shared head (one head for every modality); use model.fusion=shared_linear or shared_mlp"),
    "decomposable_fusion": (lambda model: getattr(model.fusion, "decomposable", False),
                            "a decomposable fusion (each modality's additive share of a linear fusion); "
                            "use model.fusion=concat_linear"),
    "two_modalities": (lambda model: len(model.modalities) == 2, "exactly two modalities"),
    "stagewise_encoders": (lambda model: all(stagewise(e) for e in model.encoders.values()),
                           "encoders that expose their stages for intermediate fusion (ResNet-18: "
                           "model.encoder=resnet18_audio or resnet18_video)"),
}


@dataclasses.dataclass(frozen=True, eq=False)
class SubStep:
    """One optimizer step of a batch, for a method that takes several (:meth:`Method.sub_steps`).

    Attributes:
        name: what the step is called in the logs (its loss terms become ``<name>/<term>``).
        params: the parameters the step updates; every other parameter's gradient is dropped
            before the optimizer step, so it is left as it is (``None``: every parameter).
    """

    name: str
    params: Optional[Tuple[nn.Parameter, ...]] = None


@dataclasses.dataclass(frozen=True)
class Phase:
    """A span of epochs of a staged schedule (:meth:`Method.phase`).

    Attributes:
        name: two consecutive epochs with the same name are in the same phase.
        fresh_optimizer: when the phase begins, the optimizer's state (moments, step counts)
            is cleared, as if a new optimizer were built for it.
    """

    name: str
    fresh_optimizer: bool = False


#: The input key of a re-sampled copy's (B, M) bool keep mask (``Method.sample_plan``).
KEEP = "__keep__"


@dataclasses.dataclass(frozen=True)
class SamplePlan:
    """The training rows of the coming epochs (``Method.sample_plan``): ``counts`` (N, K) int,
    ``counts[i, k]`` copies of row i in variant k, which keeps the modalities ``keep[k]``
    (``keep``: (K, M) bool, model order); expanded by ``training.samplers.ResumableSampler``."""

    counts: Tensor
    keep: Tensor


@dataclasses.dataclass
class NoHyperparameters:
    """A method without hyperparameters of its own."""


class Method(nn.Module):
    """Base class of every balancing method.

    Subclasses set ``name``, ``description``, ``reference`` and ``Hyperparameters`` (a
    dataclass whose fields, with types and defaults, are the method's ``method.<key>``
    options; ``hparam(default, search=...)`` adds the range ``mmbalance tune`` searches),
    declare what they need of the model in ``requires`` (keys of :data:`REQUIREMENTS`),
    implement :meth:`training_loss`, and register with ``@register``.

    Args:
        model: the multimodal model to train (a submodule, so it is checkpointed with the
            method's own state).
        hparams: an instance of ``Hyperparameters``.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    Hyperparameters: ClassVar[type] = NoHyperparameters
    requires: ClassVar[FrozenSet[str]] = frozenset()
    default_init: ClassVar[str] = "scratch"  # default of method.init
    init_choices: ClassVar[Tuple[str, ...]] = INITS  # the method.init values this method accepts
    trains_final: ClassVar[bool] = True  # False: the stages are the training (ensemble)
    resamples: ClassVar[bool] = False  # True: the training rows follow sample_plan()
    #: the fusion the method gives its model when the model's fusion lacks what ``requires``
    #: asks (``shared_linear`` for a method that requires ``shared_head``); None: none
    fusion: ClassVar[Optional[str]] = None
    regression_loss: str = "mse"  # task loss of a regressor; build_method sets it from model.regression_loss

    def __init__(self, model: MultimodalModel, hparams: Any = None) -> None:
        super().__init__()
        if self.fusion is not None and "shared_head" in self.requires and not model.shared_head:
            model.use_fusion(self.fusion)
        self.check_requirements(model)
        self.model = model
        self.hparams = hparams if hparams is not None else self.Hyperparameters()
        init = getattr(self.hparams, "init", "scratch")
        if init not in self.init_choices:
            raise ConfigError(f"method {self.name!r}: method.init {init!r} is not possible; "
                              f"valid: {', '.join(self.init_choices)}")

    @classmethod
    def check_requirements(cls, model: MultimodalModel) -> None:
        """Raises one ConfigError naming the method and what its model lacks (a shared head
        is not lacking when the method gives its model one, ``fusion``)."""
        for need in sorted(cls.requires):
            if need == "shared_head" and cls.fusion is not None:
                continue
            check, what = REQUIREMENTS[need]
            if not check(model):
                detail = "" if need != "decomposable_fusion" else f" (got {type(model.fusion).__name__})"
                raise ConfigError(f"method {cls.name!r} needs {what}{detail}")

    # -- initialization from unimodal stages -----------------------------------
    @classmethod
    def stages(cls, modalities: Sequence[str], hparams: Any = None) -> List[Stage]:
        """The stages a ``train`` call runs before this method: one ``unimodal`` stage per
        modality when ``method.init`` is ``unimodal``, else none."""
        hp = hparams if hparams is not None else cls.Hyperparameters()
        return unimodal_stages(modalities) if getattr(hp, "init", "scratch") == "unimodal" else []

    def load_stages(self, states: Mapping[str, Mapping[str, Tensor]]) -> None:
        """Copies each stage's trained encoder and unimodal head into this method's model.

        Args:
            states: stage name -> the stage method's ``state_dict`` (from its best
                checkpoint, ``RunDir.method_state``).
        """
        stages = {s.name: s for s in self.stages(self.model.modalities, self.hparams)}
        for name, state in states.items():
            m = stages[name].modality
            for part, module in (("encoders", self.model.encoders[m]), ("heads", self.model.heads[m])):
                prefix = f"model.{part}.{m}."
                module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})

    def optimizer_groups(self) -> List[Dict[str, Any]]:
        """:meth:`param_groups`, with the encoders split into groups whose ``init_scale`` is
        ``method.encoder_lr_scale`` when they start from unimodal stages (paper A.4). The
        scale multiplies a group's ``lr_scale``, which methods such as MSLR keep changing."""
        groups = self.param_groups()
        scale = getattr(self.hparams, "encoder_lr_scale", 1.0)
        if getattr(self.hparams, "init", "scratch") != "unimodal" or scale == 1.0:
            return groups
        encoders = {id(p) for m in self.model.modalities for p in self.model.modality_parameters(m)}
        out = []
        for group in groups:
            params = list(group["params"])
            mine = [p for p in params if id(p) in encoders]
            rest = [p for p in params if id(p) not in encoders]
            out += [{**group, "params": ps, "init_scale": f} for ps, f in ((mine, scale), (rest, 1.0)) if ps]
        return out

    # -- forward and loss ---------------------------------------------------
    def forward(self, inputs: Mapping[str, Tensor]) -> ModelOutput:
        """Runs the model; override to change what is encoded (for example one modality). A
        re-sampled batch's ``inputs[KEEP]`` drops modalities per sample (``forward_dropped``)."""
        if KEEP in inputs:
            inputs = dict(inputs)
            keep = inputs.pop(KEEP)
            return self.model.forward_dropped(inputs, keep, how=getattr(self.hparams, "drop", "feature"))
        return self.model(inputs)

    def sample_plan(self) -> Optional[SamplePlan]:
        """The rows of the coming epoch when :attr:`resamples` (read as its iteration starts; set
        at an epoch boundary, kept in the checkpointed state). ``None``: every row once."""
        return None

    def training_loss(self, batch: Batch, out: ModelOutput) -> LossTerms:
        """The loss of one training batch, as named terms."""
        raise NotImplementedError

    def predict(self, out: ModelOutput) -> Tensor:
        """The (B, C) prediction that evaluation scores."""
        return out.logits

    # -- hooks ----------------------------------------------------------------
    def after_backward(self) -> Dict[str, float]:
        """Gradient edits after backward, before the optimizer step; returns values to log."""
        return {}

    def param_groups(self) -> List[Dict[str, Any]]:
        """Optimizer parameter groups (extra keys such as ``lr_scale`` are allowed)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def update_param_groups(self, groups: List[Dict[str, Any]]) -> None:
        """Edits the optimizer's live parameter groups (for example a group's ``lr_scale``);
        called after an epoch or validation hook returned values, before the schedule
        re-applies every group's ``lr_scale``."""

    def on_epoch_start(self, epoch: int, train_loader: Optional[Iterable] = None) -> Dict[str, float]:
        """Called before each training epoch with the training loader (for methods that
        need a pass over training data, e.g. prototypes); returns values to log."""
        return {}

    def on_epoch_end(self, epoch: int) -> Dict[str, float]:
        """Called after each training epoch; returns values to log."""
        return {}

    def on_epoch_pass(self, epoch: int, passes: Any) -> Dict[str, float]:
        """Called after each training epoch (after its validation, before :meth:`on_epoch_end`
        and the epoch's checkpoint) with ``passes``, a
        :class:`mmbalance.training.passes.EpochPasses`: lazy passes over the ``train`` split and
        the run's ``val`` split (never test) in eval mode under no_grad, each rank over its
        shard, results reduced over DDP ranks (``passes.losses(split)``, ``passes.collect``).
        Nothing is read unless the method asks; returns values to log."""
        return {}

    def held_out_rows(self, train_rows: int) -> int:
        """How many of the ``train_rows`` training rows this method holds out for its epoch
        passes: the run then trains on the others only and ``passes``' ``val`` split is the
        held-out rows (a seeded draw, :func:`mmbalance.training.build.hold_out`). 0 (default):
        every training row is trained on and ``val`` is the run's validation split."""
        return 0

    def on_validation_batch(self, out: ModelOutput, labels: Tensor) -> None:
        """Sees each validation batch's output (for methods that keep their own statistics)."""

    def on_validation_end(self, metrics: Mapping[str, float]) -> Dict[str, float]:
        """Called with the validation metrics of each epoch; returns values to log."""
        return {}

    # -- several optimizer steps per batch, staged schedules ---------------------
    def sub_steps(self) -> Optional[Sequence[SubStep]]:
        """The optimizer steps of the next batch, in order (MLA: one per modality), or
        ``None`` (default): one ordinary step. For each, the loop clears the gradients, takes
        :meth:`sub_step_loss` of the batch's one forward output, backpropagates it, calls
        :meth:`after_step_backward`, drops the gradients of parameters outside
        ``SubStep.params``, clips and steps the optimizer. A step sees the updates of the ones
        before it through any module it calls again (the shared head)."""
        return None

    def sub_step_loss(self, step: SubStep, batch: Batch, out: ModelOutput) -> LossTerms:
        """The loss of one of :meth:`sub_steps` (default :meth:`training_loss`)."""
        return self.training_loss(batch, out)

    def after_step_backward(self, step: SubStep) -> Dict[str, float]:
        """Gradient edits of one of :meth:`sub_steps` (default :meth:`after_backward`)."""
        return self.after_backward()

    def phase(self, epoch: int) -> Optional[Phase]:
        """The phase of a staged schedule that ``epoch`` belongs to (``None``, default: no
        stages). When it differs from the previous epoch's and says ``fresh_optimizer``, the
        loop clears the optimizer state before the epoch, before :meth:`on_epoch_start`."""
        return None

    def combine_gradients(self, loss: LossTerms, gradient: Any) -> Optional[Dict[nn.Parameter, Tensor]]:
        """Replaces the step's one backward of ``loss.total`` by gradients the method builds
        from separate per-term gradients (MMPareto's Pareto integration; AMCo).

        ``gradient(term, params)`` returns ``d term / d params`` as a list of tensors (zeros
        where ``term`` does not reach a parameter), averaged over DDP ranks, so every rank
        combines the gradients of the whole global batch and decides alike. Return
        parameter -> gradient for the parameters whose gradient the method sets; every other
        trainable parameter gets the gradient of ``loss.total``. The loop writes all of them
        through its own backward (precision scaling, DDP), then calls :meth:`after_backward`.
        Default ``None``: one ordinary backward of ``loss.total``.
        """
        return None

    # -- helpers for subclasses -------------------------------------------------
    def task_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy for classification; for regression (``num_classes == 1``) the batch
        mean of ``(y_hat - y)^2`` (``regression_loss="mse"``) or ``|y_hat - y|`` (``"l1"``, the
        authors' MOSI/MOSEI trainer), set from ``model.regression_loss``."""
        if self.model.task == "regression":
            pred, target = logits.float().reshape(-1), labels.float().reshape(-1)
            if self.regression_loss == "l1":
                return F.l1_loss(pred, target)
            return F.mse_loss(pred, target)
        return F.cross_entropy(logits.float(), labels.long())

    def unimodal_losses(self, out: ModelOutput, labels: Tensor) -> Dict[str, Tensor]:
        """Modality -> task loss of that modality's own head."""
        return {m: self.task_loss(z, labels) for m, z in out.unimodal_logits.items()}

    def multiloss_terms(self, out: ModelOutput, labels: Tensor, unimodal_weight: float) -> Dict[str, Tensor]:
        """``task`` (fused) plus ``unimodal/<m>`` = ``unimodal_weight`` x each head's task loss."""
        terms = {"task": self.task_loss(out.logits, labels)}
        for m, loss in self.unimodal_losses(out, labels).items():
            terms[f"unimodal/{m}"] = unimodal_weight * loss
        return terms

    @staticmethod
    def all_reduce_mean(value: Tensor) -> Tensor:
        """Mean of ``value`` over DDP ranks (itself when not distributed), so that every rank
        applies the same balancing coefficients and the weights stay identical."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            value = value.detach().clone()
            torch.distributed.all_reduce(value)
            value /= torch.distributed.get_world_size()
        return value

    @classmethod
    def hyperparameter_defaults(cls) -> Dict[str, Any]:
        """Name -> default of every hyperparameter."""
        return {f.name: f.default for f in dataclasses.fields(cls.Hyperparameters)}

    @classmethod
    def search_space(cls, trial: Any, lr: float = DEFAULT_LR) -> Dict[str, Any]:
        """What ``mmbalance tune`` searches: an Optuna ``trial`` -> dotted override keys.
        The learning rate (``optim.lr``, a factor of 10 either side of the configured rate
        ``lr``: :func:`learning_rate_range`), then every hyperparameter declared with
        ``hparam(..., search=...)`` as ``method.<name>``. A method whose space is
        conditional may override (``space = super().search_space(trial, lr)``)."""
        space = {"optim.lr": learning_rate_range(lr).suggest(trial, "optim.lr")}
        for name, search in searched(cls.Hyperparameters).items():
            space[f"method.{name}"] = search.suggest(trial, f"method.{name}")
        return space


#: name -> method class, filled by :func:`register`
REGISTRY: Dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: adds a :class:`Method` subclass to :data:`REGISTRY` under its ``name``,
    and gives its ``Hyperparameters`` the options every method has unless it declares them
    itself: ``init`` (default ``cls.default_init``), ``encoder_lr_scale`` (the encoders'
    learning-rate factor after unimodal stages) and ``stage_lr`` (the stages' learning rate;
    ``None``: ``optim.lr``)."""
    if not cls.name or cls.name in REGISTRY:
        raise ValueError(f"cannot register {cls.__name__}: name {cls.name!r} is empty or taken")
    cls.Hyperparameters = _with_common_options(cls)
    REGISTRY[cls.name] = cls
    return cls


def _with_common_options(cls: type) -> type:
    hp = cls.Hyperparameters.__dict__.get("_declared", cls.Hyperparameters)  # inherited: rebuild for cls
    names = {f.name for f in dataclasses.fields(hp)}
    extra = [(name, kind, dataclasses.field(default=default)) for name, kind, default in
             (("init", str, cls.default_init), ("encoder_lr_scale", float, ENCODER_LR_SCALE),
              ("stage_lr", Optional[float], None)) if name not in names]
    if not extra:
        return hp
    new = dataclasses.make_dataclass(hp.__name__, extra, bases=(hp,))
    new.__qualname__, new.__module__, new.__doc__ = f"{cls.__qualname__}.Hyperparameters", cls.__module__, hp.__doc__
    new._declared = hp
    return new


def zero_like_loss(out: ModelOutput) -> Tensor:
    return torch.zeros((), device=out.logits.device)
