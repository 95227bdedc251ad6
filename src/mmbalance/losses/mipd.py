"""MIPD: the permutation game of MCR (paper Eq. 7-10, Sections 3.2-3.3, Appendix A.5)."""

from __future__ import annotations

import itertools
from functools import partial
import warnings
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..types import ModelOutput
from .divergence import jensen_shannon_rows
from .gradients import grad_multiply
from .permutations import PERMUTATION_KINDS, sample_permutations

#: Gradient multiplier k on the paths of the modalities a perturbed prediction leaves alone.
STRATEGIES = {"collaborative": 1.0, "independent": 0.0, "greedy": -1.0}
#: Multiplier on the unperturbed reference and on the shared fusion parameters. Under greedy
#: the authors' two detach copies of a term (``-J(sa, detv) + J(sa, deta)``) give both
#: opposite gradients that cancel.
REFERENCE_MULTIPLIER = {"collaborative": 1.0, "independent": 1.0, "greedy": 0.0}
PERTURBATIONS = ("permute", "latent_noise", "latent_zero", "input_noise", "input_zero")
ROUTINGS = ("authors", "features")

Subset = Tuple[str, ...]


class Perturbation(NamedTuple):
    """One step's perturbed rows, shared by every subset (drawn once per step).

    Attributes:
        copies: P', the perturbed copies of the batch (P, or 1 for the ``*_zero`` kinds).
        valid: (P' * B,) bool, the rows that count (``derangement``/``different_label``).
        index: (P' * B,) row of the batch that each perturbed row takes (permutations), or
            None when ``features`` holds the perturbed rows themselves.
        features: modality -> (P' * B, D_m) perturbed features (noise and zero kinds).
    """

    copies: int
    valid: Tensor
    index: Optional[Tensor]
    features: Dict[str, Tensor]

    def rows(self, modality: str, feats: Tensor, rows: slice = slice(None)) -> Tensor:
        """The perturbed rows ``rows`` of ``modality`` whose unperturbed features are ``feats``."""
        if self.index is None:
            return self.features[modality][rows]
        return feats[self.index[rows]]


class MIPD(nn.Module):
    """The competition terms ``L_MIPD = -weight * sum_S D(f(Z), f(Z with S perturbed))``.

    For every non-empty proper subset S of the modalities (Appendix A.5; at most
    ``max_subset_size`` large) the latents of S are perturbed (by default P within-batch
    permutations of this step's features, drawn once per step and shared by every subset,
    never a second encoder pass), fused, and compared with the unperturbed prediction by the
    Jensen-Shannon divergence D of the softmaxes (Eq. 10), or the squared difference for
    regression (C = 1).

    Gradient routing, the authors' detach copies (``routing="authors"``, the default). Per
    perturbed prediction of subset S:

    - parameters specific to modality m (its encoder and, for a fusion that reports
      ``modality_parameters(m)``, its fusion slice ``W_m``) get multiplier +1 if m is in S and
      the strategy's k otherwise (collaborative +1, independent 0, greedy -1, Figure 3);
    - shared fusion parameters (the bias of a linear fusion, every layer of a
      non-decomposable one) and the unperturbed reference get the reference multiplier:
      1 under collaborative and independent, 0 under greedy.

    This is what the authors' formulas give term by term, e.g. greedy
    ``-J(sa,detv) + J(sa,deta) - J(sv,deta) + J(sv,detv)``, where a detach flag detaches a
    modality's product ``z_m W_m^T`` and leaves the bias (or the whole non-decomposable
    fusion) live in both copies. The value never depends on the strategy.

    Args:
        strategy: ``collaborative``, ``independent`` or ``greedy``.
        weight: lambda_M >= 0.
        num_permutations: P >= 1 (also the number of noise draws for the noise kinds).
        permutation: ``all``, ``derangement`` or ``different_label``.
        perturbation: ``permute`` or an Appendix C.1 ablation: ``latent_noise``,
            ``latent_zero``, ``input_noise`` (P extra encoder passes), ``input_zero`` (one).
        noise_std: noise scale, relative to each feature's batch standard deviation.
        max_subset_size: largest |S| given a term (``None``: all 2^M - 2 subsets).
        detach_reference: cut the unperturbed prediction's path under every strategy (the
            authors' Something-Something code).
        routing: ``authors`` (above) or ``features``. ``features`` is this library's routing
            before version 0.2: only the features carry the multiplier k, every fusion
            parameter ascends D (multiplier +1, also the slices ``W_m`` of modalities outside
            S and the shared parameters under greedy); the reference as above.
        chunk_size: at most this many perturbed rows per fusion call, in whole copies of
            the batch, under activation checkpointing (generic path only); ``None``: all.
        decompose: for a decomposable fusion (``concat_linear``) perturb the (B, C)
            per-modality products instead of the (B, D_m) features: the same value and
            gradients at B*P*C cost. ``False`` forces the generic path.
        compile: ``torch.compile`` the decomposed path's tensor math (off by default: on
            this project's 2-core CPU it costs 7-60 s of compilation; see
            docs/performance.md for what it gains). Kept as ``compile_math`` (an attribute
            named ``compile`` would hide ``nn.Module.compile``).

    Example:
        >>> mipd = MIPD("greedy", weight=0.1, num_permutations=32)
        >>> loss = F.cross_entropy(out.logits, y) + mipd(model, out, y)
    """

    def __init__(self, strategy: str = "greedy", weight: float = 0.1, num_permutations: int = 32,
                 permutation: str = "all", perturbation: str = "permute", noise_std: float = 1.0,
                 max_subset_size: Optional[int] = None, detach_reference: bool = False,
                 routing: str = "authors", chunk_size: Optional[int] = None, decompose: bool = True,
                 compile: bool = False) -> None:
        super().__init__()
        for name, value, valid in [("strategy", strategy, STRATEGIES), ("permutation", permutation, PERMUTATION_KINDS),
                                   ("perturbation", perturbation, PERTURBATIONS), ("routing", routing, ROUTINGS)]:
            if value not in valid:
                raise ConfigError(f"MIPD {name} {value!r} is unknown; valid: {', '.join(valid)}")
        for name, value in [("weight", weight), ("noise_std", noise_std)]:
            if not value >= 0:
                raise ConfigError(f"MIPD {name} must be >= 0, got {value}")
        if int(num_permutations) < 1:
            raise ConfigError(f"MIPD num_permutations must be >= 1, got {num_permutations}")
        if max_subset_size is not None and max_subset_size < 1:
            raise ConfigError(f"MIPD max_subset_size must be >= 1 or None, got {max_subset_size}")
        if chunk_size is not None and chunk_size < 1:
            raise ConfigError(f"MIPD chunk_size must be >= 1 or None, got {chunk_size}")
        self.strategy, self.weight, self.num_permutations = strategy, weight, int(num_permutations)
        self.permutation, self.perturbation, self.noise_std = permutation, perturbation, noise_std
        self.max_subset_size, self.detach_reference = max_subset_size, detach_reference
        self.routing, self.chunk_size, self.decompose = routing, chunk_size, decompose
        # not self.compile: that would hide nn.Module.compile()
        self.compile_math, self._compiled_math = bool(compile), None
        self._warned_batch = False

    # ----------------------------------------------------------------- structure
    def subsets(self, modalities: Sequence[str]) -> List[Subset]:
        """Non-empty proper subsets S that get a term, smallest first (A.5)."""
        largest = len(modalities) - 1
        if self.max_subset_size is not None:
            largest = min(largest, self.max_subset_size)
        return [s for r in range(1, largest + 1) for s in itertools.combinations(modalities, r)]

    def multipliers(self, subset: Subset, modalities: Sequence[str]) -> Tuple[Dict[str, float], float]:
        """``(modality -> multiplier, shared multiplier)`` of the perturbed prediction of S."""
        k = STRATEGIES[self.strategy]
        own = {m: 1.0 if m in subset else k for m in modalities}
        return own, REFERENCE_MULTIPLIER[self.strategy]

    # ----------------------------------------------------------------- forward
    def forward(self, model: nn.Module, out: ModelOutput, labels: Tensor,
                inputs: Optional[Mapping[str, Tensor]] = None) -> Tensor:
        """``-weight * sum_S D_S`` (a scalar in the graph, routed as in the class docstring)."""
        if self.weight == 0:
            return out.logits.new_zeros((), dtype=torch.float32)
        return -self.weight * self.divergences(model, out, labels, inputs).sum()

    def divergences(self, model: nn.Module, out: ModelOutput, labels: Tensor,
                    inputs: Optional[Mapping[str, Tensor]] = None) -> Tensor:
        """(S,) raw divergences D_S, in the order of :meth:`subsets`, with routed gradients.

        Args:
            model: the :class:`~mmbalance.MultimodalModel` that produced ``out``.
            out: its output on this batch (features live in the graph).
            labels: (B,) targets (used by ``different_label``).
            inputs: the batch's inputs; needed only by the ``input_*`` perturbations.
        """
        batch = out.logits.shape[0]
        if batch < 2 and self.perturbation == "permute" and not self._warned_batch:
            warnings.warn("MCR: batch of 1, the only permutation is the identity; the MIPD term is 0")
            self._warned_batch = True
        subsets = self.subsets(model.modalities)
        needed = sorted({m for s in subsets for m in s}, key=model.modalities.index)
        pert = self.perturb(model, out, labels, inputs, needed)
        ref_factor = 0.0 if self.detach_reference else REFERENCE_MULTIPLIER[self.strategy]
        reference = grad_multiply(out.logits, ref_factor)
        if self.chunk_size is not None and pert.copies > max(1, self.chunk_size // batch):
            return torch.stack([self._chunked(model, out, s, pert, reference) for s in subsets])
        if self.decompose and self.routing == "authors" and _is_decomposable(model.fusion):
            fusion = model.fusion
            live = fusion.modality_logits(out.features)  # m -> (B, C), in the graph
            if pert.index is None:  # noise/zero kinds: the perturbed features' own products
                perturbed = fusion.modality_logits({m: pert.features[m] for m in needed})
            else:
                perturbed = {m: live[m] for m in needed}
            mods = model.modalities
            routes = [self.multipliers(s, mods) for s in subsets]
            math = self._compiled() if self.compile_math else _decomposed_divergences
            return math(tuple(live[m] for m in mods), tuple(perturbed.get(m) for m in mods),
                        fusion.shared_logits(), pert.index, pert.valid, reference, pert.copies,
                        own=tuple(tuple(own[m] for m in mods) for own, _ in routes),
                        in_subset=tuple(tuple(m in s for m in mods) for s in subsets),
                        shared=tuple(shared for _, shared in routes),
                        all_valid=self.permutation == "all" and pert.index is not None)
        fused = self._fused_generic(model, out, subsets, pert)
        return _masked_rows_mean(_row_divergence(fused, reference), pert.valid, pert.copies, False)

    def _compiled(self):
        """``torch.compile`` of the decomposed path's tensor math (``compile=True``), made once."""
        if self._compiled_math is None:
            self._compiled_math = torch.compile(_decomposed_divergences, dynamic=False)
        return self._compiled_math

    # ----------------------------------------------------------------- perturbations
    def perturb(self, model: nn.Module, out: ModelOutput, labels: Tensor, inputs, modalities: Sequence[str]
                ) -> Perturbation:
        """Draws this step's perturbation of ``modalities`` (once, for every subset)."""
        feats, batch, device = out.features, out.logits.shape[0], out.logits.device
        kind, num = self.perturbation, self.num_permutations
        if kind == "permute":
            perms, valid = sample_permutations(batch, num, self.permutation, labels, device=device)
            return Perturbation(num, valid.reshape(-1), perms.reshape(-1), {})
        if kind.startswith("input_") and inputs is None:
            raise ValueError(f"perturbation {kind!r} re-encodes the inputs: pass inputs= to MCRLoss")
        draws = 1 if kind.endswith("zero") else num
        valid = torch.ones(batch * draws, dtype=torch.bool, device=device)
        if kind == "latent_zero":
            rows = {m: torch.zeros_like(feats[m]) for m in modalities}
        elif kind == "latent_noise":
            rows = {m: _noisy(feats[m].repeat(draws, 1), feats[m], self.noise_std) for m in modalities}
        else:
            rows = {m: self._reencode(model, m, inputs[m], draws) for m in modalities}
        return Perturbation(draws, valid, None, rows)

    def _reencode(self, model, modality: str, x: Tensor, draws: int) -> Tensor:
        """Input-space perturbations: one extra encoder pass per draw (their documented cost)."""
        encoder = (partial(model.encode_modality, modality) if hasattr(model, "encode_modality")
                   else model.encoders[modality])  # the model's check and sequence pooling
        if self.perturbation == "input_zero":
            return encoder(torch.zeros_like(x))
        return torch.cat([encoder(_noisy(x, x, self.noise_std)) for _ in range(draws)])

    # ----------------------------------------------------------------- fusion paths
    def _fused_generic(self, model, out: ModelOutput, subsets: List[Subset], pert: Perturbation) -> Tensor:
        """(S, P', B, C) perturbed logits from the fusion network on perturbed features; one
        fusion call over all subsets' rows when the parameter routing is the same for all."""
        batch, copies = out.logits.shape[0], pert.copies
        k = STRATEGIES[self.strategy]
        repeated = {m: grad_multiply(out.features[m], k).repeat(copies, 1) for m in model.modalities
                    if any(m not in s for s in subsets)}
        perturbed = {m: pert.rows(m, out.features[m]) for m in {m for s in subsets for m in s}}

        def rows(subset: Subset) -> Dict[str, Tensor]:
            return {m: perturbed[m] if m in subset else repeated[m] for m in model.modalities}

        fuse = self._router(model)
        if self.routing == "features" or not _owned_parameters(model.fusion, model.modalities):
            joined = {m: torch.cat([rows(s)[m] for s in subsets]) for m in model.modalities}
            fused = fuse(joined, subsets[0])
        else:
            fused = torch.cat([fuse(rows(s), s) for s in subsets])
        return fused.view(len(subsets), copies, batch, -1)

    def _chunked(self, model, out: ModelOutput, subset: Subset, pert: Perturbation, reference: Tensor) -> Tensor:
        """One subset's masked-mean divergence over chunks of ``chunk_size`` rows (whole
        copies of the batch): each chunk gathers its perturbed rows, fuses them and sums its
        divergences inside a checkpoint, so only the chunk's inputs survive until backward."""
        from torch.utils.checkpoint import checkpoint

        batch, copies = reference.shape[0], pert.copies
        per_chunk = max(1, self.chunk_size // batch)
        k, fuse = STRATEGIES[self.strategy], self._router(model)
        routed = {m: grad_multiply(out.features[m], k) for m in model.modalities if m not in subset}

        def chunk_sum(first: int, last: int) -> Tensor:  # copies [first, last) of the batch
            rows = slice(first * batch, last * batch)
            fused_in = {m: pert.rows(m, out.features[m], rows) if m in subset else routed[m].repeat(last - first, 1)
                        for m in model.modalities}
            per_row = _row_divergence(fuse(fused_in, subset).view(last - first, batch, -1), reference)
            return (per_row.reshape(-1) * pert.valid[rows]).sum()

        total = reference.new_zeros((), dtype=torch.float32)
        for first in range(0, copies, per_chunk):
            total = total + checkpoint(chunk_sum, first, min(first + per_chunk, copies), use_reentrant=False)
        return total / pert.valid.sum().clamp(min=1)

    def _router(self, model) -> Callable[[Dict[str, Tensor], Subset], Tensor]:
        """``fuse(features, subset)``: the fusion network with its parameters' gradients
        routed for subset S (the features arrive already routed)."""
        fusion, modalities = model.fusion, model.modalities
        if self.routing == "features":
            return lambda feats, subset: model.fuse(feats)
        owner = _owned_parameters(fusion, modalities)

        def fuse(feats: Dict[str, Tensor], subset: Subset) -> Tensor:
            own, shared = self.multipliers(subset, modalities)
            factors = {name: own[owner[id(p)]] if id(p) in owner else shared for name, p in fusion.named_parameters()}
            if all(f == 1.0 for f in factors.values()):
                return model.fuse(feats)
            params = {name: grad_multiply(p, factors[name]) for name, p in fusion.named_parameters()}
            return torch.func.functional_call(fusion, params, (feats,))

        return fuse


def _decomposed_divergences(live: Tuple[Tensor, ...], perturbed_source: Tuple[Optional[Tensor], ...],
                            shared_logits: Tensor,
                            index: Optional[Tensor], valid: Tensor, reference: Tensor, copies: int,
                            own: Tuple[Tuple[float, ...], ...], in_subset: Tuple[Tuple[bool, ...], ...],
                            shared: Tuple[float, ...], all_valid: bool) -> Tensor:
    """(S,) masked-mean divergences of a decomposable fusion: for subset s, the perturbed
    (P', B, C) products of its modalities (rows ``index`` of the live products, or the noise/
    zero products) plus the others' live products routed by ``own[s]`` plus the shared part
    routed by ``shared[s]``, against the reference. Pure tensor math with the routing as
    constants, so ``torch.compile`` can take it whole."""
    batch = reference.shape[0]
    # index_select, not src[index]: its backward is an index_add, where advanced indexing's
    # is an accumulating index_put that sorts the indices first
    rows = [None if src is None else src.index_select(0, index).view(copies, batch, -1) if index is not None
            else src.view(copies, batch, -1) for src in perturbed_source]
    stacked = []
    for mask, factors, shared_factor in zip(in_subset, own, shared):
        logits = grad_multiply(shared_logits, shared_factor)
        for k, inside in enumerate(mask):
            logits = logits + (rows[k] if inside else grad_multiply(live[k], factors[k]))
        stacked.append(logits.expand(copies, batch, -1))
    return _masked_rows_mean(_row_divergence(torch.stack(stacked), reference), valid, copies, all_valid)


def _masked_rows_mean(per_row: Tensor, valid: Tensor, copies: int, all_valid: bool) -> Tensor:
    """(S,) means of (S, P', B) divergences over the valid perturbed rows (0 if none)."""
    if all_valid:  # the ``all`` kind: every row counts
        return per_row.mean((1, 2))
    mask = valid.view(copies, -1).to(per_row.dtype)
    return (per_row * mask).sum((1, 2)) / mask.sum().clamp(min=1)


def _is_decomposable(fusion: nn.Module) -> bool:
    return bool(getattr(fusion, "decomposable", False)) and hasattr(fusion, "modality_logits") \
        and hasattr(fusion, "shared_logits")


def _owned_parameters(fusion: nn.Module, modalities: Sequence[str]) -> Dict[int, str]:
    """id(parameter) -> modality, for the fusion parameters that belong to one modality."""
    if not hasattr(fusion, "modality_parameters"):
        return {}
    return {id(p): m for m in modalities for p in fusion.modality_parameters(m)}


def _row_divergence(perturbed: Tensor, reference: Tensor) -> Tensor:
    """(..., B) divergences of perturbed (..., B, C) logits from the (B, C) reference: JSD of
    the softmaxes (one autograd node, the reference's softmax taken once), or the squared
    difference (C = 1)."""
    if perturbed.shape[-1] == 1:
        return (perturbed.float() - reference.float()).pow(2).mean(-1)
    return jensen_shannon_rows(perturbed, reference)


def _noisy(x: Tensor, reference: Tensor, std: float) -> Tensor:
    """``x + std * sigma * N(0, 1)`` with sigma the per-feature batch std of ``reference``."""
    sigma = reference.detach().float().std(0, unbiased=False) if reference.shape[0] > 1 else 1.0
    return x + (std * sigma * torch.randn_like(x, dtype=torch.float)).to(x.dtype)
