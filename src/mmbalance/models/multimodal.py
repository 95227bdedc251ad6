"""The multimodal model: one encoder per modality, a fusion network, one head per modality."""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Collection, Dict, Iterator, List, Mapping, Optional, Union

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..types import ModelOutput
from .fusion import FUSIONS
from .lazy import module_device, placeholder, realize
from .shared_head import SHARED_HEADS

#: how a (B, T, D) encoder output becomes (B, D) features (``sequence_pool``)
POOLS = ("mean", "max", "first", "last")
#: where :meth:`MultimodalModel.forward_dropped` removes a modality: its encoder's (B, D_m)
#: feature is zeroed before fusion, or its raw input is zeroed before the encoder
DROPS = ("feature", "input")
#: what names the modalities a sample keeps: a (B, M) bool tensor in the model's modality
#: order, a mapping modality -> (B,) bool tensor or bool (absent: kept), or the names kept
Keep = Union[Tensor, Mapping[str, Union[Tensor, bool]], Collection[str]]


def _heads(num_classes: int, dims: Dict[str, int]) -> nn.ModuleDict:
    return nn.ModuleDict({m: nn.Linear(d, num_classes) for m, d in dims.items()})


def _fusion(name: str, num_classes: int, kwargs: Dict[str, Any], dims: Dict[str, int]) -> nn.Module:
    return {**FUSIONS, **SHARED_HEADS}[name](dims, num_classes, **kwargs)


def _pool(h: Tensor, how: str) -> Tensor:
    if how == "mean":
        return h.mean(1)
    if how == "max":
        return h.amax(1)
    return h[:, 0] if how == "first" else h[:, -1]


def stagewise(encoder: nn.Module) -> bool:
    """Whether ``encoder`` exposes its stages (ResNet-18: stem, layer1..4): ``stages`` (names),
    ``stage_input(x)``, ``stage(name, h)`` on (B, C, ...) maps and ``readout(h) -> (B, D)``."""
    return all(hasattr(encoder, a) for a in ("stages", "stage_input", "stage", "readout"))


def _batch_size(inputs: Mapping[str, Any], modalities: List[str]) -> int:
    for m in modalities:
        x = inputs.get(m)
        if isinstance(x, Tensor) and x.dim() > 0:
            return int(x.shape[0])
    raise ConfigError("cannot tell the batch size: no modality's input is a tensor; pass a (B, M) keep mask")


class MultimodalModel(nn.Module):
    """``f(X) = f_c(f_1(X_1), ..., f_M(X_M))`` with unimodal heads ``f_cm(f_m(X_m))``
    (paper Eq. 1-2).

    Any ``nn.Module`` can be an encoder. Its feature size D_m is ``feature_dims[m]``, else
    its ``out_dim`` attribute, else read from its output on the first batch: until then the
    heads and a named fusion are placeholders whose parameters are uninitialized (as in
    ``nn.LazyLinear``), so an optimizer may be created before the first batch and still
    trains them. ``model.materialize(inputs)`` runs that first pass explicitly (no gradient,
    eval mode); do it before wrapping the model in ``DistributedDataParallel``.

    Args:
        encoders: modality name -> encoder mapping (B, ...) to (B, D_m) features, or to
            (B, T, D_m) sequences, pooled over T by ``sequence_pool``. An encoder that
            returns a tuple or a dict: wrap it in :class:`~mmbalance.models.Select`. M >= 2;
            the order of this mapping is the model's modality order.
        num_classes: C; ``1`` makes the model a regressor.
        fusion: a name in ``FUSIONS`` or a module called as ``fusion(features) -> (N, C)``.
        feature_dims: modality -> D_m; overrides ``out_dim``, never required.
        fusion_hidden: width of the non-linear fusions.
        sequence_pool: ``mean`` (default), ``max``, ``first`` or ``last`` step of a
            (B, T, D) output (no padding mask; an encoder that pads should pool itself).
        shared_dim: for a shared-head fusion (``shared_linear``, ``shared_mlp``: one head
            applied to every modality, :mod:`.shared_head`), the width each modality is
            projected to first; ``None``: no projection, every D_m must be equal.

    Example:
        >>> model = MultimodalModel({"a": MLPEncoder(10, 8), "v": nn.Sequential(nn.Linear(12, 8))}, 5)
        >>> out = model({"a": xa, "v": xv})  # out.logits (B,5), out.features["v"] (B,8)
    """

    def __init__(self, encoders: Mapping[str, nn.Module], num_classes: int,
                 fusion: Union[str, nn.Module] = "concat_linear",
                 feature_dims: Optional[Mapping[str, int]] = None, fusion_hidden: int = 128,
                 sequence_pool: str = "mean", shared_dim: Optional[int] = None) -> None:
        super().__init__()
        if len(encoders) < 2:
            raise ConfigError(f"MultimodalModel needs at least 2 modalities, got {list(encoders)}")
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        if sequence_pool not in POOLS:
            raise ConfigError(f"sequence_pool {sequence_pool!r} is unknown; valid: {', '.join(POOLS)}")
        self.encoders = nn.ModuleDict(dict(encoders))
        self.modalities = list(encoders)
        self.num_classes, self.sequence_pool = num_classes, sequence_pool
        self._declared = self._declared_dims(feature_dims or {})
        self.feature_dims: Dict[str, int] = {}  # modality -> D_m, once known
        self._waiting: List[Callable[[Dict[str, int]], None]] = []
        self.fusion_hidden, self.shared_dim = fusion_hidden, shared_dim
        build_fusion = None
        if isinstance(fusion, str):
            if fusion not in FUSIONS and fusion not in SHARED_HEADS:
                raise ConfigError(f"unknown fusion {fusion!r}; valid: {', '.join([*FUSIONS, *SHARED_HEADS])}")
            build_fusion = self._fusion_builder(fusion)
        self.stage_fusion: Optional[nn.Module] = None  # set_stage_fusion: intermediate fusion
        build_heads = partial(_heads, num_classes)
        if len(self._declared) == len(self.modalities):
            self.feature_dims = dict(self._declared)
            self.heads = build_heads(self.feature_dims)
            self.fusion = build_fusion(self.feature_dims) if build_fusion else fusion
        else:  # sizes known after the first batch
            self.heads = placeholder(build_heads, self.modalities)
            self.fusion = placeholder(build_fusion, self.modalities) if build_fusion else fusion

    def _fusion_builder(self, name: str):
        kwargs: Dict[str, Any] = {} if name == "concat_linear" else {"hidden": self.fusion_hidden}
        if name in SHARED_HEADS:
            kwargs["project"] = self.shared_dim
        return partial(_fusion, name, self.num_classes, kwargs)

    def use_fusion(self, name: str) -> None:
        """Replaces the fusion by the named one, built as the constructor builds it (a
        placeholder until the feature sizes are known): how a method that needs a shared
        head gives its model one."""
        build = self._fusion_builder(name)
        if self.materialized:
            self.fusion = build(self.feature_dims).to(module_device(self))
        else:
            self.fusion = placeholder(build, self.modalities, module_device(self))

    @property
    def shared_head(self) -> bool:
        """Whether the fusion is one head applied to every modality (:mod:`.shared_head`): its
        per-modality outputs are then the unimodal logits."""
        return bool(getattr(self.fusion, "shared", False))

    def _heads_and_fusion(self, features: Dict[str, Tensor]):
        """(unimodal logits, fused logits): each modality's own head and the fusion, or with
        a shared head its per-modality outputs and their sum."""
        if self.shared_head:
            unimodal = self.fusion.modality_logits({m: features[m] for m in self.modalities})
            return unimodal, self.fusion.combine(unimodal)
        return {m: self.heads[m](features[m]) for m in self.modalities}, self.fuse(features)

    def _declared_dims(self, given: Mapping[str, int]) -> Dict[str, int]:
        unknown = sorted(set(given) - set(self.modalities))
        if unknown:
            raise ConfigError(f"feature_dims names modality {unknown[0]!r}; valid: {', '.join(self.modalities)}")
        dims = {m: given.get(m, getattr(enc, "out_dim", None)) for m, enc in self.encoders.items()}
        return {m: int(d) for m, d in dims.items() if d is not None}

    @property
    def task(self) -> str:
        """``"regression"`` when ``num_classes == 1``, else ``"classification"``."""
        return "regression" if self.num_classes == 1 else "classification"

    # ----------------------------------------------------------- feature sizes
    @property
    def materialized(self) -> bool:
        """True once every D_m is known (at once when each encoder declares it)."""
        return len(self.feature_dims) == len(self.modalities)

    def materialize(self, inputs: Mapping[str, Any]) -> "MultimodalModel":
        """Runs the encoders once on ``inputs`` (no gradient, eval mode) to learn each D_m and
        build the heads and fusion; nothing happens when the sizes are known. Returns self."""
        if not self.materialized:
            was_training = self.training
            self.eval()
            with torch.no_grad():
                self.encode(inputs)
            self.train(was_training)
        return self

    def when_materialized(self, callback: Callable[[Dict[str, int]], None]) -> None:
        """Calls ``callback(feature_dims)`` once the sizes are known (now, if they are):
        how a loss or method sizes its own modules for a model that has not seen a batch."""
        if self.materialized:
            callback(self.feature_dims)
        else:
            self._waiting.append(callback)

    def _realize(self, dims: Dict[str, int]) -> None:
        for m, d in self._declared.items():
            if d != dims[m]:
                raise ConfigError(f"encoder {m!r} declares {d} features (out_dim or feature_dims) "
                                  f"but returned {dims[m]}")
        with torch.inference_mode(False):  # a first batch under inference_mode must not freeze them
            self.heads = realize(self.heads, dims)
            self.fusion = realize(self.fusion, dims)
            self.feature_dims = dict(dims)
            waiting, self._waiting = self._waiting, []
            for callback in waiting:
                callback(self.feature_dims)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """A state dict sizes a model that has not seen a batch: D_m is its head's width."""
        keys = {m: f"{prefix}heads.{m}.weight" for m in self.modalities}
        if not self.materialized and all(k in state_dict for k in keys.values()):
            self._realize({m: int(state_dict[k].shape[1]) for m, k in keys.items()})
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ forward
    def encode(self, inputs: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        """Modality -> (B, D_m) features."""
        missing = [m for m in self.modalities if m not in inputs]
        if missing:
            raise KeyError(f"inputs lack modalities {missing}; the model expects {self.modalities}")
        if self.stage_fusion is not None:
            features = self._encode_stages(inputs)
        else:
            features = {m: self.encode_modality(m, inputs[m]) for m in self.modalities}
        if not self.materialized:
            self._realize({m: int(features[m].shape[-1]) for m in self.modalities})
        return features

    def set_stage_fusion(self, fusion: Optional[nn.Module]) -> None:
        """Intermediate fusion: :meth:`encode` then runs every encoder stage by stage and, after
        each stage, ``fusion(stage_name, maps) -> maps`` on modality -> (B, C_m, ...) maps, a
        module that sees every modality (MMTM, models/mmtm.py). ``None`` restores late fusion.
        Needs :func:`stagewise` encoders with the same stage names. :meth:`encode_modality`
        still runs one encoder alone, without the fusion."""
        if fusion is not None:
            flat = [f"{m} ({type(e).__name__})" for m, e in self.encoders.items() if not stagewise(e)]
            if flat:
                raise ConfigError(f"intermediate fusion needs encoders that expose their stages (resnet18_audio, "
                                  f"resnet18_video); {', '.join(flat)} do not")
            if len({tuple(e.stages) for e in self.encoders.values()}) != 1:
                raise ConfigError("intermediate fusion needs encoders with the same stages; got "
                                  + "; ".join(f"{m}: {list(e.stages)}" for m, e in self.encoders.items()))
        self.stage_fusion = fusion

    def _encode_stages(self, inputs: Mapping[str, Any]) -> Dict[str, Tensor]:
        h = {m: self.encoders[m].stage_input(inputs[m]) for m in self.modalities}
        for name in self.encoders[self.modalities[0]].stages:
            h = dict(self.stage_fusion(name, {m: self.encoders[m].stage(name, h[m]) for m in self.modalities}))
        return {m: self._feature(m, self._readout(m, h[m], inputs[m]), inputs[m]) for m in self.modalities}

    def _readout(self, m: str, h: Tensor, x: Any) -> Tensor:
        """The encoder's readout; its forward hooks fire with (input, feature) as if it had run
        whole, so code that watches or edits an encoder's output sees the stage path too."""
        encoder = self.encoders[m]
        z = encoder.readout(h)
        for hook in list(encoder._forward_hooks.values()):  # torch keeps them there (no public accessor)
            out = hook(encoder, (x,), z)
            z = z if out is None else out
        return z

    def encode_modality(self, m: str, x: Any) -> Tensor:
        """(B, D_m) features of one modality: its encoder's output, checked, and a (B, T, D)
        sequence pooled by ``sequence_pool``."""
        return self._feature(m, self.encoders[m](x), x)

    def _feature(self, m: str, out: Any, x: Any) -> Tensor:
        if not isinstance(out, Tensor):
            key = "0" if isinstance(out, (tuple, list)) else "'<key>'"
            raise ConfigError(f"encoder {m!r} returned a {type(out).__name__}, not a tensor; pick the feature "
                              f"with mmbalance.models.Select(encoder, {key})")
        if isinstance(x, Tensor) and x.dim() > 0 and out.dim() > 0 and out.shape[0] != x.shape[0]:
            raise ConfigError(f"encoder {m!r} returned shape {tuple(out.shape)} for a batch of {x.shape[0]}: "
                              "the batch axis must come first in an encoder's output")
        if out.dim() == 3:
            out = _pool(out, self.sequence_pool)
        if out.dim() != 2:
            raise ConfigError(f"encoder {m!r} returned shape {tuple(out.shape)}; features must be (B, D) or "
                              "(B, T, D): end the encoder with nn.Flatten() or a pooling layer")
        return out

    def fuse(self, features: Mapping[str, Tensor]) -> Tensor:
        """The fusion network alone: modality -> (N, D_m) features to (N, C) logits."""
        return self.fusion(features)

    def forward(self, inputs: Mapping[str, Tensor]) -> ModelOutput:
        features = self.encode(inputs)
        unimodal, logits = self._heads_and_fusion(features)
        return ModelOutput(logits=logits, unimodal_logits=unimodal, features=features)

    # -------------------------------------------------------- dropped modalities
    def keep_mask(self, keep: Keep, batch_size: int, device: Optional[torch.device] = None) -> Tensor:
        """(B, M) bool, True where sample i keeps modality m (columns in ``self.modalities``
        order), from any form of :data:`Keep`."""
        M = len(self.modalities)
        if isinstance(keep, Tensor):
            if keep.shape != (batch_size, M):
                raise ValueError(f"keep mask has shape {tuple(keep.shape)}; expected ({batch_size}, {M}) "
                                 f"for modalities {self.modalities}")
            return keep.to(device=device, dtype=torch.bool)
        if isinstance(keep, str):
            keep = [keep]
        unknown = [m for m in keep if m not in self.modalities]
        if unknown:
            raise KeyError(f"keep names modality {unknown[0]!r}; the model has {self.modalities}")
        columns = []
        for m in self.modalities:
            k = keep.get(m, True) if isinstance(keep, Mapping) else m in keep
            k = torch.as_tensor(k, device=device).to(torch.bool)
            columns.append(k.expand(batch_size) if k.dim() == 0 else k.reshape(batch_size))
        return torch.stack(columns, 1)

    def drop_features(self, features: Mapping[str, Tensor], keep: Keep, scale: float = 1.0) -> Dict[str, Tensor]:
        """Modality -> (B, D_m) features with those of dropped (sample, modality) pairs set
        to zero, every feature then multiplied by ``scale`` (OPM's ``1/(1 - theta)``; the
        gradient is scaled alike). No gradient reaches a dropped feature. For ``concat_linear``
        the fused logits of the result are the full logits minus each dropped modality's
        ``z_m W_m^T`` (the bias is kept)."""
        batch = next(iter(features.values())).shape[0]
        mask = self.keep_mask(keep, batch, next(iter(features.values())).device)
        out = {}
        for j, m in enumerate(self.modalities):
            z = features[m]
            z = torch.where(mask[:, j:j + 1], z, torch.zeros((), dtype=z.dtype, device=z.device))
            out[m] = z * scale if scale != 1.0 else z
        return out

    def drop_inputs(self, inputs: Mapping[str, Any], keep: Keep) -> Dict[str, Any]:
        """Modality -> raw input with the rows of dropped (sample, modality) pairs zeroed (a
        modality kept by every sample is passed through untouched)."""
        batch = keep.shape[0] if isinstance(keep, Tensor) else _batch_size(inputs, self.modalities)
        first = next((x for x in inputs.values() if isinstance(x, Tensor)), None)
        mask = self.keep_mask(keep, batch, first.device if first is not None else None)
        out = dict(inputs)
        for j, m in enumerate(self.modalities):
            if bool(mask[:, j].all()):
                continue
            x = inputs[m]
            if not isinstance(x, Tensor):
                raise ConfigError(f"cannot zero the input of modality {m!r}: it is a {type(x).__name__}, "
                                  "not a tensor; drop its feature instead (how='feature')")
            k = mask[:, j].reshape((batch,) + (1,) * (x.dim() - 1))
            out[m] = torch.where(k, x, torch.zeros((), dtype=x.dtype, device=x.device))
        return out

    def forward_dropped(self, inputs: Mapping[str, Any], keep: Keep, how: str = "feature",
                        scale: float = 1.0) -> ModelOutput:
        """The model's output with modalities removed per sample: the one path every method
        and diagnostic uses to drop a modality.

        Args:
            inputs: modality -> (B, ...) raw input, as for :meth:`forward`.
            keep: what each sample keeps (:data:`Keep`): (B, M) bool, a mapping, or names.
            how: ``feature`` zeroes a dropped modality's (B, D_m) encoder feature before
                fusion (:meth:`drop_features`); ``input`` zeroes its raw input before the
                encoder (:meth:`drop_inputs`), so the encoder's response to zeros (its biases,
                its normalization) still reaches the fusion.
            scale: multiplies every feature before fusion (OPM's ``1/(1 - theta)``).

        Returns:
            ModelOutput whose ``features`` are the ones fused (dropped, scaled) and whose
            ``unimodal_logits`` are each head on those features.
        """
        if how not in DROPS:
            raise ConfigError(f"unknown drop {how!r}; valid: {', '.join(DROPS)}")
        if how == "input":
            features = self.encode(self.drop_inputs(inputs, keep))
            features = {m: z * scale for m, z in features.items()} if scale != 1.0 else features
        else:
            features = self.drop_features(self.encode(inputs), keep, scale)
        unimodal, logits = self._heads_and_fusion(features)
        return ModelOutput(logits=logits, unimodal_logits=unimodal, features=features)

    def modality_parameters(self, modality: str) -> Iterator[nn.Parameter]:
        """Parameters of ``modality``'s encoder (by structure, not by name matching)."""
        return self.encoders[modality].parameters()

    def head_parameters(self, modality: str) -> Iterator[nn.Parameter]:
        """Parameters of ``modality``'s unimodal head."""
        return self.heads[modality].parameters()

    def fusion_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the fusion network."""
        return self.fusion.parameters()
