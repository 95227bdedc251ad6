"""The Multimodal Competition Regularizer (paper Section 3, Algorithm 1, Appendix A.5)."""

from __future__ import annotations

import itertools
import warnings
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..types import LossTerms, ModelOutput
from .ceb import CEBHead, ceb
from .contrastive import supervised_contrastive
from .divergence import jensen_shannon_per_sample, masked_mean
from .gradients import grad_multiply
from .permutations import PERMUTATION_KINDS, sample_permutations

#: Gradient multiplier k on the other modalities' paths inside a perturbed prediction.
STRATEGIES = {"collaborative": 1.0, "independent": 0.0, "greedy": -1.0}
#: Multiplier on the unperturbed reference. Under greedy the authors' two routed copies
#: (``-JSD(sa, detv) + JSD(sa, deta)``) give the reference opposite gradients that cancel.
REFERENCE_MULTIPLIER = {"collaborative": 1.0, "independent": 1.0, "greedy": 0.0}
PERTURBATIONS = ("permute", "latent_noise", "latent_zero", "input_noise", "input_zero")


class MCRLoss(nn.Module):
    """MCR regularizer ``L_MCR = L_MIPD + w_con L_Con + w_ceb L_CEB`` (paper Eq. 6).

    Returns the regularizer only; the task and unimodal losses belong to the method.

    MIPD (Eq. 10, A.5): for every non-empty proper subset S of the modalities (at most
    ``max_subset_size`` large) the latents of S are perturbed (by default: P shared
    within-batch permutations of this step's training features, never a second encoder
    pass), all B*P perturbed rows go through ``model.fuse`` in one batched call, and the
    term is ``-mipd_weight * D(perturbed, unperturbed)`` with D the Jensen-Shannon
    divergence of the softmaxes (classification) or the MSE (regression). Inside each
    perturbed prediction the other modalities' paths carry the strategy's gradient
    multiplier k (collaborative +1, independent 0, greedy -1, Figure 3): the perturbed
    modality's encoder and the fusion ascend D, the others ascend, ignore or descend it.
    The value never depends on the strategy.

    Contrastive: :func:`supervised_contrastive` on the (projected, when sizes differ)
    features. CEB: :class:`CEBHead` on the detached fused logits against the live features.

    Differences from the authors' release, on purpose: the regularizer is added (the release
    computes it and drops it), permutations never re-encode the batch, and under greedy the
    fusion network ascends D (one routed copy) rather than receiving the cancelled gradient
    of the release's two copies; the reference's gradient cancels as in the release.

    Args:
        strategy: ``collaborative``, ``independent`` or ``greedy``.
        mipd_weight: lambda_M >= 0.
        contrastive_weight: weight of L_Con >= 0.
        ceb_weight: weight of L_CEB >= 0 (1 for the authors' Conformer/MOSEI runs).
        num_permutations: P >= 1 (also the number of noise draws for the noise kinds).
        temperature: contrastive temperature > 0.
        detach_reference: cut the unperturbed prediction's path under every strategy.
        permutation: ``all``, ``derangement`` or ``different_label``.
        perturbation: ``permute`` or an Appendix C.1 ablation: ``latent_noise``,
            ``latent_zero``, ``input_noise`` (P extra encoder passes), ``input_zero`` (one).
        noise_std: noise scale, relative to each feature's batch standard deviation.
        max_subset_size: largest |S| given a term (``None``: all 2^M - 2 subsets).
        cross_modal_only: contrastive term in the paper's Eq. 15 form.
        projection_dim: shared size for the contrastive projections (default: the smallest
            D_m); projections exist only when feature sizes differ.
        ceb_hidden: hidden width d of the CEB head (default: mean D_m).
        feature_dims, num_classes: build the heads now instead of on :meth:`bind`.
        chunk_size: at most this many perturbed rows per ``model.fuse`` call, in whole
            copies of the batch (at least one: B rows); ``None``: all B*P rows of a subset at
            once. Each chunk's fusion and divergence run under activation checkpointing
            (permuted rows gathered inside the chunk), so the MIPD holds one chunk's fusion
            activations instead of B*P rows' at the price of a second fusion forward in
            backward; the value and gradients are unchanged.
    """

    def __init__(self, strategy: str = "greedy", mipd_weight: float = 0.1, contrastive_weight: float = 1.0,
                 ceb_weight: float = 0.0, num_permutations: int = 32, temperature: float = 0.5,
                 detach_reference: bool = False, permutation: str = "all", perturbation: str = "permute",
                 noise_std: float = 1.0, max_subset_size: Optional[int] = None, cross_modal_only: bool = False,
                 projection_dim: Optional[int] = None, ceb_hidden: Optional[int] = None,
                 feature_dims: Optional[Mapping[str, int]] = None, num_classes: Optional[int] = None,
                 chunk_size: Optional[int] = None) -> None:
        super().__init__()
        _check_choice("strategy", strategy, STRATEGIES)
        _check_choice("permutation", permutation, PERMUTATION_KINDS)
        _check_choice("perturbation", perturbation, PERTURBATIONS)
        for name, value in [("mipd_weight", mipd_weight), ("contrastive_weight", contrastive_weight),
                            ("ceb_weight", ceb_weight), ("noise_std", noise_std)]:
            if not value >= 0:
                raise ConfigError(f"MCRLoss {name} must be >= 0, got {value}")
        if int(num_permutations) < 1:
            raise ConfigError(f"MCRLoss num_permutations must be >= 1, got {num_permutations}")
        if not temperature > 0:
            raise ConfigError(f"MCRLoss temperature must be > 0, got {temperature}")
        if max_subset_size is not None and max_subset_size < 1:
            raise ConfigError(f"MCRLoss max_subset_size must be >= 1 or None, got {max_subset_size}")
        if chunk_size is not None and chunk_size < 1:
            raise ConfigError(f"MCRLoss chunk_size must be >= 1 or None, got {chunk_size}")
        self.chunk_size = chunk_size
        self.strategy, self.permutation, self.perturbation = strategy, permutation, perturbation
        self.mipd_weight, self.contrastive_weight, self.ceb_weight = mipd_weight, contrastive_weight, ceb_weight
        self.num_permutations, self.temperature = int(num_permutations), temperature
        self.detach_reference, self.noise_std = detach_reference, noise_std
        self.max_subset_size, self.cross_modal_only = max_subset_size, cross_modal_only
        self.projection_dim, self.ceb_hidden = projection_dim, ceb_hidden
        self.projections: Optional[nn.ModuleDict] = None
        self.ceb_head: Optional[CEBHead] = None
        self._built = False
        self._warned_batch = False
        if feature_dims is not None and num_classes is not None:
            self._build(dict(feature_dims), num_classes)

    # ----------------------------------------------------------------- set-up
    def bind(self, model: nn.Module) -> "MCRLoss":
        """Builds the projections and the CEB head for ``model``; call before creating the
        optimizer so that their parameters are trained."""
        if not self._built:
            self._build(dict(model.feature_dims), model.num_classes)
            self.to(next(model.parameters()).device)
        return self

    def _build(self, dims: Dict[str, int], num_classes: int) -> None:
        if len(set(dims.values())) > 1 and self.contrastive_weight > 0:
            size = self.projection_dim or min(dims.values())
            self.projections = nn.ModuleDict({m: nn.Linear(d, size) for m, d in dims.items()})
        if self.ceb_weight > 0:
            hidden = self.ceb_hidden or max(1, round(sum(dims.values()) / len(dims)))
            self.ceb_head = CEBHead(num_classes, sum(dims.values()), hidden)
        self._built = True

    def subsets(self, modalities: Sequence[str]) -> List[Tuple[str, ...]]:
        """Non-empty proper subsets S that get a MIPD term, smallest first (A.5)."""
        largest = len(modalities) - 1
        if self.max_subset_size is not None:
            largest = min(largest, self.max_subset_size)
        return [s for r in range(1, largest + 1) for s in itertools.combinations(modalities, r)]

    # ----------------------------------------------------------------- forward
    def forward(self, model: nn.Module, out: ModelOutput, labels: Tensor,
                inputs: Optional[Mapping[str, Tensor]] = None) -> LossTerms:
        """Computes the regularizer for one batch.

        Args:
            model: the :class:`~mmbalance.MultimodalModel` that produced ``out``.
            out: its output on this batch (training mode, features live in the graph).
            labels: (B,) targets.
            inputs: the batch's inputs; needed only by the ``input_*`` perturbations.

        Returns:
            LossTerms with ``terms`` ``mipd``, ``contrastive`` and ``ceb`` (weighted) and
            the raw per-subset divergences in ``logs`` (``mipd/<a+b>``).
        """
        if not self._built:
            self.bind(model)
            if any(p.requires_grad for p in self.parameters()):
                warnings.warn("MCRLoss built its heads on first use; call mcr.bind(model) before "
                              "creating the optimizer so that they are trained", stacklevel=2)
        logs: Dict[str, float] = {}
        terms = {"mipd": self._mipd(model, out, labels, inputs, logs)}
        terms["contrastive"] = self._contrastive(out, labels) if self.contrastive_weight > 0 else _zero(out)
        terms["ceb"] = self._ceb(out) if self.ceb_weight > 0 else _zero(out)
        return LossTerms.from_terms(terms, logs)

    def _mipd(self, model, out: ModelOutput, labels: Tensor, inputs, logs: Dict[str, float]) -> Tensor:
        if self.mipd_weight == 0:
            return _zero(out)
        batch = out.logits.shape[0]
        if batch < 2 and self.perturbation == "permute" and not self._warned_batch:
            warnings.warn("MCR: batch of 1, the only permutation is the identity; the MIPD term is 0")
            self._warned_batch = True
        k = STRATEGIES[self.strategy]
        ref_factor = 0.0 if self.detach_reference else REFERENCE_MULTIPLIER[self.strategy]
        reference = grad_multiply(out.logits, ref_factor)
        total = _zero(out)
        for subset in self.subsets(model.modalities):
            if self.chunk_size is not None and self._copies() > self._chunk_copies(batch):
                sources, index, valid = self._perturb_rows(model, out, subset, labels, inputs)
                divergence = self._chunked_divergence(model, out, subset, sources, index, reference, valid, k)
            else:
                perturbed, valid = self._perturb(model, out, subset, labels, inputs)
                copies = valid.shape[0] // batch
                fused_in = {m: perturbed[m] if m in subset
                            else grad_multiply(out.features[m], k).repeat(copies, 1)
                            for m in model.modalities}
                divergence = self._divergence(model.fuse(fused_in), reference.repeat(copies, 1), valid)
            logs["mipd/" + "+".join(subset)] = float(divergence.detach())
            total = total + divergence
        return -self.mipd_weight * total

    def _divergence(self, perturbed: Tensor, reference: Tensor, valid: Tensor) -> Tensor:
        return masked_mean(_per_row_divergence(perturbed, reference), valid)

    def _copies(self) -> int:
        """Perturbed copies of the batch per subset: P (1 for ``input_zero``/``latent_zero``)."""
        return 1 if self.perturbation.endswith("zero") else self.num_permutations

    def _chunk_copies(self, batch: int) -> int:
        return max(1, self.chunk_size // batch)

    def _chunked_divergence(self, model, out: ModelOutput, subset, sources, index: Optional[Tensor],
                            reference: Tensor, valid: Tensor, k: float) -> Tensor:
        """:meth:`_divergence` over row chunks of ``chunk_size`` (see the class docstring):
        each chunk gathers its perturbed rows, fuses them and sums its divergences inside a
        checkpoint, so only the chunk's inputs survive until backward."""
        from torch.utils.checkpoint import checkpoint

        batch = reference.shape[0]
        copies, per_chunk = valid.shape[0] // batch, self._chunk_copies(batch)
        routed = {m: grad_multiply(out.features[m], k) for m in model.modalities if m not in subset}

        def chunk_sum(first: int, last: int) -> Tensor:  # copies [first, last) of the batch
            rows, n = slice(first * batch, last * batch), last - first
            fused_in = {m: (sources[m][rows] if index is None else sources[m][index[rows]]) if m in subset
                        else routed[m].repeat(n, 1) for m in model.modalities}
            per_row = _per_row_divergence(model.fuse(fused_in), reference.repeat(n, 1))
            return (per_row * valid[rows]).sum()

        total = _zero(out)
        for first in range(0, copies, per_chunk):
            total = total + checkpoint(chunk_sum, first, min(first + per_chunk, copies), use_reentrant=False)
        return total / valid.sum().clamp(min=1)

    def _perturb_rows(self, model, out: ModelOutput, subset, labels: Tensor, inputs):
        """``(sources, index, valid)``: row r of the perturbed features of m is
        ``sources[m][index[r]]`` (``index`` None: ``sources[m][r]``); ``valid`` (B*P',)."""
        if self.perturbation == "permute":
            batch, device = out.logits.shape[0], out.logits.device
            perms, valid = sample_permutations(batch, self.num_permutations, self.permutation, labels, device=device)
            return {m: out.features[m] for m in subset}, perms.reshape(-1), valid.reshape(-1)
        perturbed, valid = self._perturb(model, out, subset, labels, inputs)
        return perturbed, None, valid

    def _perturb(self, model, out: ModelOutput, subset, labels: Tensor, inputs):
        """Returns modality -> (B*P', D_m) perturbed features of ``subset`` and a (B*P',) mask."""
        feats, batch, device = out.features, out.logits.shape[0], out.logits.device
        kind, num = self.perturbation, self.num_permutations
        if kind == "permute":
            perms, valid = sample_permutations(batch, num, self.permutation, labels, device=device)
            flat = perms.reshape(-1)
            return {m: feats[m][flat] for m in subset}, valid.reshape(-1)
        if kind.startswith("input_") and inputs is None:
            raise ValueError(f"perturbation {kind!r} re-encodes the inputs: pass inputs= to MCRLoss")
        draws = 1 if kind.endswith("zero") else num
        valid = torch.ones(batch * draws, dtype=torch.bool, device=device)
        if kind == "latent_zero":
            return {m: torch.zeros_like(feats[m]) for m in subset}, valid
        if kind == "latent_noise":
            return {m: _noisy(feats[m].repeat(draws, 1), feats[m], self.noise_std) for m in subset}, valid
        return {m: self._reencode(model, m, inputs[m], draws) for m in subset}, valid

    def _reencode(self, model, modality: str, x: Tensor, draws: int) -> Tensor:
        """Input-space perturbations: one extra encoder pass per draw (their documented cost)."""
        encoder = model.encoders[modality]
        if self.perturbation == "input_zero":
            return encoder(torch.zeros_like(x))
        return torch.cat([encoder(_noisy(x, x, self.noise_std)) for _ in range(draws)])

    def _contrastive(self, out: ModelOutput, labels: Tensor) -> Tensor:
        feats = [out.features[m] for m in out.features]
        if self.projections is not None:
            feats = [self.projections[m](out.features[m]) for m in out.features]
        loss = supervised_contrastive(feats, labels, self.temperature, self.cross_modal_only)
        return self.contrastive_weight * loss

    def _ceb(self, out: ModelOutput) -> Tensor:
        reconstruction = self.ceb_head(out.logits.detach().float())
        return self.ceb_weight * ceb(reconstruction, list(out.features.values()))


def _per_row_divergence(perturbed: Tensor, reference: Tensor) -> Tensor:
    """(N,) JSD of the softmaxes (classification) or squared difference (regression, C = 1)."""
    if perturbed.shape[-1] == 1:
        return (perturbed.float() - reference.float()).pow(2).mean(-1)
    return jensen_shannon_per_sample(perturbed, reference)


def _noisy(x: Tensor, reference: Tensor, std: float) -> Tensor:
    """``x + std * sigma * N(0, 1)`` with sigma the per-feature batch std of ``reference``."""
    sigma = reference.detach().float().std(0, unbiased=False) if reference.shape[0] > 1 else 1.0
    return x + (std * sigma * torch.randn_like(x, dtype=torch.float)).to(x.dtype)


def _zero(out: ModelOutput) -> Tensor:
    return out.logits.new_zeros((), dtype=torch.float32)


def _check_choice(name: str, value: str, valid) -> None:
    if value not in valid:
        raise ConfigError(f"MCRLoss {name} {value!r} is unknown; valid: {', '.join(valid)}")
