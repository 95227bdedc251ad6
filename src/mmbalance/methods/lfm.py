"""LFM: dynamically learning the modality gap (Yang, Wan, Jiang, Xu, NeurIPS 2024)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..types import Batch, LossTerms, ModelOutput
from .base import DEFAULT_LR, Method, register
from .hparams import choice, hparam, log_uniform

WEIGHTINGS = ("heuristic", "learned")
ALPHA_GRADS = ("first", "all")
HELD_OUT = ("train", "val")
#: What ``mmbalance tune`` searches for ``lr_alpha`` (around the official 1e-4).
LR_ALPHA = log_uniform(1e-5, 1e-2)

#: The official heuristic: the classification weight as a degree-5 polynomial of the epoch,
#: fitted to the learned weight's curve (njustkmg/NeurIPS24-LFM, Crema_epoch.py:47-53).
#: The alignment weight's coefficients there are exactly 1 minus these (constant) and their negations.
CLS_POLY = (2.04623704e-01, 3.35472727e-03, 1.22989557e-04, -2.92947416e-06, 2.23835486e-08, -5.39717505e-11)
#: The official run is 200 epochs (data/crema.json ``epoch_dict``); the fit holds its last value after.
POLY_LAST_EPOCH = 199


def heuristic_cls_weight(epoch: int) -> float:
    """The official heuristic classification weight at ``epoch`` (0-based); the alignment
    weight is ``1 -`` this. Epochs past 199 use epoch 199's value."""
    e = min(int(epoch), POLY_LAST_EPOCH)
    return float(sum(c * e ** i for i, c in enumerate(CLS_POLY)))


def js_alignment(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    """The official ``Alignment`` (Crema_epoch.py:38-45): with ``p, q`` the softmaxes and
    ``m = (p + q) / 2``, ``0.5 * (KL(m || p) + KL(m || q))`` summed over classes, batch mean.
    (``F.kl_div(p.log(), m)`` is ``KL(m || p)``: the divergences point from ``m``.)"""
    log_p, log_q = F.log_softmax(p_logits.float(), -1), F.log_softmax(q_logits.float(), -1)
    m = 0.5 * (log_p.exp() + log_q.exp())
    log_m = m.log()
    kl_m_p = (m * (log_m - log_p)).sum(-1).mean()
    kl_m_q = (m * (log_m - log_q)).sum(-1).mean()
    return 0.5 * (kl_m_p + kl_m_q)


def mean_pairwise_alignment(unimodal_logits: Mapping[str, Tensor], modalities: Sequence[str]) -> Tensor:
    """:func:`js_alignment` averaged over every unordered pair of modalities (one pair for two)."""
    pairs = list(itertools.combinations(modalities, 2))
    return torch.stack([js_alignment(unimodal_logits[a], unimodal_logits[b]) for a, b in pairs]).mean()


@register
class LFM(Method):
    """``L = 2 * (w_cls * CE(f(X), y) + w_align * A)``, ``w_cls + w_align = 1``, with ``A`` the
    mean over modality pairs of the official Jensen-Shannon-type alignment of the unimodal heads'
    softmaxes (:func:`js_alignment`). The weight changes during training:

    - ``weighting=heuristic`` (default; the official README runs ``Crema_epoch.py``):
      ``w_cls(e)`` is the official degree-5 polynomial of the epoch ``e`` (0-based), fitted to
      the learned weight's curve (:func:`heuristic_cls_weight`: 0.2046 at epoch 0, 0.5392 at 100,
      0.9160 at 199); ``w_align = 1 - w_cls``.
    - ``weighting=learned`` (``Crema_epoch_learnable.py``): ``w_align`` starts at
      ``alpha_init`` (0.95) and after each epoch takes one step
      ``w_align <- clip(w_align - lr_alpha * g, 0.05, 0.95)``, where on ``val_rows`` held-out rows,
      with ``L_v = w_cls CE + w_align A`` (no factor 2), ``g`` is the mean of the Hessian-vector
      product ``d/dθ <dL_v/dθ, stop(dCE/dθ)>`` over the model's first parameter tensor
      (``alpha_grad=first``, official) or over every parameter (``alpha_grad=all``). The
      held-out rows: ``held_out_size`` (16) training rows kept out of training for the whole
      run (``held_out=train``, official) or the run's validation split (``held_out=val``).
      ``lr_alpha`` halves every 20 epochs.

    State (the epoch whose weight applies, ``w_align`` and ``lr_alpha``) lives in buffers: a
    resumed run continues with them. Any number of modalities (pairwise alignment averaged);
    classification only (the alignment compares class distributions).

    Notes:
        Read from njustkmg/NeurIPS24-LFM (``Crema_epoch.py``, ``Crema_epoch_learnable.py``).
        - The paper describes the unsupervised term as contrastive learning; the official code
          aligns the two unimodal heads' softmax outputs with ``0.5 (KL(m||p) + KL(m||q))``
          (Crema_epoch.py:38-45), which is what this does (no features, no temperature, no
          InfoNCE); ``p.log()`` is computed as ``log_softmax`` (same value, no underflow).
        - The official model has no fusion head: its prediction and CE input is
          ``0.5 (o_a + o_v)`` (Crema_epoch.py:70). Here CE is on the model's fused prediction
          (``out.logits``), which is also what evaluation scores.
        - Heuristic: the official fit is used unclipped (``w_cls`` exceeds 1 from epoch 177 and
          peaks at 1.0105 at 183: a slightly negative alignment weight); past epoch 199 (the
          end of the official 200-epoch run) the polynomial diverges, so epoch 199's value is held.
        - Learned, held-out data: the official code carves 16 random training rows out of the
          training set (``torch.randperm(n)[:16]``; the rest is the training set) and uses the
          first half of that one fixed batch (8 rows) for every update
          (Crema_epoch_learnable.py:216-233, 59-62). The default does the same
          (``held_out=train``, ``held_out_size`` 16, a seeded draw, sorted by row, so "the first
          half" is the 8 lowest-indexed of the 16 rather than the 8 first drawn); with
          ``weighting=heuristic`` nothing is held out. ``held_out=val`` takes the first
          ``val_rows`` of the run's validation split instead and trains on every training row.
          Each rank reads the first rows of its shard; the per-rank ``g`` are averaged over DDP
          ranks. Never the test split; eval mode.
        - Learned, timing: the official code updates at the start of every epoch ``e``, from the
          weights after epoch ``e-1`` (Crema_epoch_learnable.py:254), and halves ``lr_alpha`` at
          ``e % 20 == 0, e > 0`` (:90-91). Here the update runs in ``on_epoch_pass`` after epoch
          ``e``, for epoch ``e+1`` (halving first when ``(e+1) % 20 == 0``): the same sequence,
          less the official first update on the initial weights (epoch 0 trains with ``alpha_init``).
        - The official ``g`` is a proxy (one tensor's HVP mean), kept as the default; its "first
          parameter" is the audio encoder's first convolution; here it is the first trainable
          parameter of the model (the first modality's encoder's first layer).
        - BalanceBenchmark's LFM starts ``w_align`` at 0.05 and runs the update on a batch of the
          test split; the official start is ``cls_k = [0.05, 0.95]``, i.e. ``w_align = 0.95``.
    """

    name = "lfm"
    description = "CE plus a JS alignment of the unimodal heads, weighted by an epoch schedule or a learned weight"
    reference = ("Yang, Wan, Jiang, Xu, Facilitating Multimodal Classification via Dynamically Learning "
                 "Modality Gap, NeurIPS 2024")
    requires = frozenset({"classification"})

    @dataclass
    class Hyperparameters:
        weighting: str = hparam("heuristic", search=choice(WEIGHTINGS))  # official README runs Crema_epoch.py
        lr_alpha: float = 1e-4  # Crema_epoch_learnable.py:246; searched when weighting=learned
        alpha_init: float = 0.95  # alignment weight at start, Crema_epoch_learnable.py:250 (cls_k[1])
        val_rows: int = 8  # half of the official 16-row held-out batch, Crema_epoch_learnable.py:59
        alpha_grad: str = "first"  # first (official hvp[0].mean()) | all
        lr_alpha_halve_every: int = 20  # Crema_epoch_learnable.py:90
        held_out: str = "train"  # train (official: randperm(n)[:16] carved from train) | val
        held_out_size: int = 16  # Crema_epoch_learnable.py:217 randperm(num_samples)[:16]

    @classmethod
    def search_space(cls, trial, lr: float = DEFAULT_LR) -> Dict[str, Any]:
        """The learning rate and ``weighting``; ``lr_alpha`` only when the weight is learned."""
        space = super().search_space(trial, lr)
        if space["method.weighting"] == "learned":
            space["method.lr_alpha"] = LR_ALPHA.suggest(trial, "method.lr_alpha")
        return space

    def __init__(self, model, hparams=None) -> None:
        super().__init__(model, hparams)
        hp = self.hparams
        if hp.weighting not in WEIGHTINGS:
            raise ConfigError(f"method 'lfm': method.weighting {hp.weighting!r} is not one of {', '.join(WEIGHTINGS)}")
        if hp.alpha_grad not in ALPHA_GRADS:
            raise ConfigError(f"method 'lfm': method.alpha_grad {hp.alpha_grad!r} is not one of "
                              f"{', '.join(ALPHA_GRADS)}")
        if hp.held_out not in HELD_OUT:
            raise ConfigError(f"method 'lfm': method.held_out {hp.held_out!r} is not one of {', '.join(HELD_OUT)}")
        if hp.held_out == "train" and not 1 <= hp.val_rows <= hp.held_out_size:
            raise ConfigError(f"method 'lfm': method.val_rows ({hp.val_rows}) must be between 1 and "
                              f"method.held_out_size ({hp.held_out_size}) with method.held_out=train")
        if hp.val_rows < 1 or hp.lr_alpha_halve_every < 1:
            raise ConfigError("method 'lfm': method.val_rows and method.lr_alpha_halve_every must be >= 1")
        if not 0.0 <= hp.alpha_init <= 1.0:
            raise ConfigError(f"method 'lfm': method.alpha_init must be in [0, 1], got {hp.alpha_init}")
        self.register_buffer("epoch", torch.tensor(0))
        self.register_buffer("align_weight", torch.tensor(float(hp.alpha_init), dtype=torch.float64))
        self.register_buffer("lr_alpha", torch.tensor(float(hp.lr_alpha), dtype=torch.float64))
        self.register_buffer("updated_epoch", torch.tensor(-1))

    def held_out_rows(self, train_rows: int) -> int:
        """``held_out_size`` training rows when the weight is learned on held-out training rows."""
        hp = self.hparams
        return hp.held_out_size if hp.weighting == "learned" and hp.held_out == "train" else 0

    def weights(self) -> tuple:
        """``(w_cls, w_align)`` for the current epoch."""
        if self.hparams.weighting == "heuristic":
            w_cls = heuristic_cls_weight(int(self.epoch))
            return w_cls, 1.0 - w_cls
        w_align = float(self.align_weight)
        return 1.0 - w_align, w_align

    def on_epoch_start(self, epoch: int, train_loader=None) -> Dict[str, float]:
        self.epoch.fill_(int(epoch))
        w_cls, w_align = self.weights()
        return {"lfm/cls_weight": w_cls, "lfm/align_weight": w_align}

    def _objective(self, out: ModelOutput, labels: Tensor):
        ce = self.task_loss(out.logits, labels)
        align = mean_pairwise_alignment(out.unimodal_logits, self.model.modalities)
        return ce, align

    def training_loss(self, batch: Batch, out: ModelOutput) -> LossTerms:
        w_cls, w_align = self.weights()
        ce, align = self._objective(out, batch.labels)
        return LossTerms.from_terms({"task": 2.0 * w_cls * ce, "alignment": 2.0 * w_align * align},
                                    logs={"lfm/alignment": align.detach()})

    # -- the learned weight ------------------------------------------------------
    def alpha_gradient(self, inputs: Mapping[str, Tensor], labels: Tensor) -> Tensor:
        """The official proxy ``g`` on one held-out batch (see the class docstring), as a tensor."""
        params: List[torch.nn.Parameter] = [p for p in self.model.parameters() if p.requires_grad]
        w_cls, w_align = self.weights()
        with torch.enable_grad():
            out = self(inputs)
            ce, align = self._objective(out, labels)
            total = w_cls * ce + w_align * align
            g_total = torch.autograd.grad(total, params, create_graph=True, allow_unused=True)
            g_cls = torch.autograd.grad(ce, params, create_graph=True, allow_unused=True)
            live = [i for i, g in enumerate(g_total) if g is not None and g.requires_grad]
            vectors = [g_cls[i] if g_cls[i] is not None else torch.zeros_like(params[i]) for i in live]
            hvp = torch.autograd.grad([g_total[i] for i in live], params, grad_outputs=vectors,
                                      allow_unused=True)
        hvp = [h if h is not None else torch.zeros_like(p) for h, p in zip(hvp, params)]
        if self.hparams.alpha_grad == "first":
            return hvp[0].detach().double().mean()
        return torch.cat([h.detach().double().reshape(-1) for h in hvp]).mean()

    def _held_out(self, passes):
        rows = self.hparams.val_rows
        xs, ys, n = [], [], 0
        for inputs, labels in passes.batches("val"):
            xs.append(inputs)
            ys.append(labels)
            n += labels.shape[0]
            if n >= rows:
                break
        if not ys:
            return None
        inputs = {m: torch.cat([x[m] for x in xs])[:rows] for m in xs[0]}
        return inputs, torch.cat(ys)[:rows]

    def on_epoch_pass(self, epoch: int, passes) -> Dict[str, float]:
        hp = self.hparams
        if hp.weighting != "learned" or epoch <= int(self.updated_epoch):
            return {}
        nxt = epoch + 1
        if nxt % hp.lr_alpha_halve_every == 0:
            self.lr_alpha /= 2
        held = self._held_out(passes)
        was = self.training
        self.eval()
        try:
            grad = (self.alpha_gradient(*held) if held is not None
                    else torch.zeros((), dtype=torch.float64, device=self.align_weight.device))
        finally:
            self.train(was)
        grad = self.all_reduce_mean(grad.to(self.align_weight))
        new = (self.align_weight - self.lr_alpha * grad).clamp(0.05, 0.95)
        self.align_weight.copy_(new)
        self.updated_epoch.fill_(epoch)
        return {"lfm/alpha_grad": float(grad), "lfm/align_weight_next": float(new)}
