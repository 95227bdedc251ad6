"""Linear probes on each modality's frozen features (paper Appendix A.1, Figure 6).

``--set trainer.probe_every=K`` adds :class:`LinearProbe` to the run: every K epochs it
encodes the training split with each modality's encoder (eval mode, no gradient), fits a
linear classifier on those features (multinomial logistic regression, L-BFGS; ridge
regression for regression tasks) and scores it on the validation split. The probe is a
separate tensor problem: nothing of it is a parameter of the model or the optimizer, no
gradient reaches the encoders, and it draws from no global random stream, so a run with
probes trains exactly like one without. The history goes into ``metrics.json``
(``probes``) and ``probes.png``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..engine import RunDir
from ..errors import ConfigError


@dataclass
class LinearProbeModel:
    """A fitted probe: ``logits = ((x - mean) / std) @ weight.T + bias``."""

    mean: Tensor
    std: Tensor
    weight: Tensor  # (C, D)
    bias: Tensor  # (C,)

    def __call__(self, x: Tensor) -> Tensor:
        return ((x.float() - self.mean) / self.std) @ self.weight.T + self.bias


def fit_linear_probe(x: Tensor, y: Tensor, num_classes: int, weight_decay: float = 1e-3,
                     max_iter: int = 100) -> LinearProbeModel:
    """Fits a linear probe on frozen features.

    Args:
        x: (N, D) features.
        y: (N,) int64 classes, or float targets when ``num_classes == 1`` (ridge regression).
        num_classes: C.
        weight_decay: L2 penalty on the weights (features are standardized first).
        max_iter: L-BFGS iterations (classification).
    """
    x = x.detach().float().reshape(len(x), -1)
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)
    z = (x - mean) / std
    if num_classes == 1:
        target = y.float().reshape(-1)
        gram = z.T @ z + weight_decay * len(z) * torch.eye(z.shape[1])
        w = torch.linalg.solve(gram, z.T @ (target - target.mean()))
        return LinearProbeModel(mean, std, w[None, :], target.mean().reshape(1))
    weight = torch.zeros(num_classes, z.shape[1], requires_grad=True)  # convex: zero start, no RNG
    bias = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")
    labels = y.long()

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ weight.T + bias, labels) + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad(), _threads(1 if z.numel() < 4_000_000 else None):
        opt.step(closure)
    return LinearProbeModel(mean, std, weight.detach(), bias.detach())


@contextmanager
def _threads(count: Optional[int]) -> Iterator[None]:
    """Runs the block on ``count`` intra-op threads: L-BFGS on a probe is a long chain of
    small operations, which extra threads only slow down (badly on a busy machine)."""
    before = torch.get_num_threads()
    if count is not None and count != before:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@torch.no_grad()
def encode_split(model: torch.nn.Module, dataset: Dataset, modalities: Optional[Sequence[str]] = None,
                 batch_size: int = 512, max_samples: Optional[int] = None) -> Tuple[Dict[str, Tensor], Tensor]:
    """Each modality's encoder output on ``dataset`` in order, eval mode, no gradient.

    Every submodule's own train/eval flag is restored afterwards, and the loader has its
    own generator, so the training run's random streams are untouched.

    Returns:
        modality -> (N, D_m) features, and the (N,) labels.
    """
    modalities = list(modalities or model.modalities)
    if max_samples is not None and len(dataset) > max_samples:
        dataset = torch.utils.data.Subset(dataset, range(max_samples))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, generator=torch.Generator())
    modes = {m: m.training for m in model.modules()}
    model.eval()
    device = next(model.parameters()).device
    feats: Dict[str, List[Tensor]] = {m: [] for m in modalities}
    labels = []
    try:
        for inputs, y in loader:
            for m in modalities:
                feats[m].append(model.encode_modality(m, inputs[m].to(device)).float().cpu().reshape(len(y), -1))
            labels.append(y)
    finally:
        for module, mode in modes.items():
            module.training = mode
    return {m: torch.cat(v) for m, v in feats.items()}, torch.cat(labels)


def probe_score(probe: LinearProbeModel, x: Tensor, y: Tensor, num_classes: int) -> float:
    """Accuracy (classification) or mean squared error (regression) of ``probe``."""
    out = probe(x)
    if num_classes == 1:
        return float(((out.reshape(-1) - y.float()) ** 2).mean())
    return float((out.argmax(-1) == y).float().mean())


def probe_modalities(model: torch.nn.Module, train: Dataset, evaluate: Dataset,
                     max_samples: Optional[int] = 20000) -> Dict[str, float]:
    """Modality -> score on ``evaluate`` of a probe fitted on ``train`` features."""
    train_x, train_y = encode_split(model, train, max_samples=max_samples)
    eval_x, eval_y = encode_split(model, evaluate)
    scores = {}
    for m in model.modalities:
        probe = fit_linear_probe(train_x[m], train_y, model.num_classes)
        scores[m] = probe_score(probe, eval_x[m], eval_y, model.num_classes)
    return scores


def final_probe(model: torch.nn.Module, data) -> Dict[str, float]:
    """``trainer.final_probe``: modality -> test score of a probe fitted on the train split's
    frozen features (the competition gap compares these across methods)."""
    with torch.random.fork_rng(devices=[]):
        return probe_modalities(model, data.train, data.test)


class LinearProbe(L.Callback):
    """Fits and scores the per-modality probes every ``every`` epochs (after validation).

    Args:
        every: K, in epochs.
        out_dir: where ``probes.png`` goes at the end of fitting (None: no plot).
        max_samples: cap on the training samples the probe is fitted on.
    """

    def __init__(self, every: int, out_dir: Optional[Path] = None, max_samples: int = 20000) -> None:
        self.every, self.out_dir, self.max_samples = every, out_dir, max_samples
        self.history: List[Dict[str, Any]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if epoch % self.every or trainer.sanity_checking:
            return
        model = pl_module.method.model
        val = trainer.val_dataloaders
        val = val[0] if isinstance(val, (list, tuple)) else val
        if val is None:
            return
        with torch.random.fork_rng(devices=[]):
            scores = probe_modalities(model, trainer.train_dataloader.dataset, val.dataset, self.max_samples)
        metric = "mse" if model.num_classes == 1 else "accuracy"
        self.history.append({"epoch": epoch, "metric": metric, "fused": pl_module.last_val.get(metric),
                             "probe": scores})
        for m, value in scores.items():
            pl_module.log(f"probe/{m}", value, on_step=False, on_epoch=True)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.out_dir is not None and self.history and trainer.is_global_zero:
            plot_probes(self.history, RunDir(self.out_dir).probes_plot)

    def state_dict(self) -> Dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        # A resumed fit starts empty and takes the saved history; validate/test after fit
        # reload the best checkpoint, whose older history must not replace the full one.
        if not self.history:
            self.history = list(state_dict.get("history", []))


def probe_callbacks(cfg, out: Path) -> List[L.Callback]:
    """``[LinearProbe]`` when ``trainer.probe_every`` > 0, else ``[]``."""
    every = getattr(cfg.trainer, "probe_every", 0)
    if every < 0:
        raise ConfigError(f"trainer.probe_every must be >= 0 (0 disables probes), got {every}")
    return [LinearProbe(every, out)] if every else []


def probe_metrics(trainer: L.Trainer) -> Dict[str, Any]:
    """``{"probes": {...}}`` for ``metrics.json`` when the run had probes, else ``{}``."""
    for cb in trainer.callbacks:
        if isinstance(cb, LinearProbe) and cb.history:
            return {"probes": {"every": cb.every, "metric": cb.history[-1]["metric"], "history": cb.history}}
    return {}


def plot_probes(history: Sequence[Mapping[str, Any]], path: Path, ensemble: Optional[float] = None,
                title: str = "Fused model and per-modality linear probes (validation)") -> None:
    """Fused validation score and each modality's probe against epochs (paper Figure 6),
    with the Ensemble as a dashed line when given."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    metric = history[0]["metric"]
    scale = 100.0 if metric == "accuracy" else 1.0
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    fused = [h["fused"] for h in history]
    if any(v is not None for v in fused):
        ax.plot(epochs, [scale * v if v is not None else float("nan") for v in fused], "o-", lw=2,
                label="fused model")
    for m in history[0]["probe"]:
        ax.plot(epochs, [scale * h["probe"][m] for h in history], "s-", label=f"probe: {m}")
    if ensemble is not None:
        ax.axhline(scale * ensemble, color="red", ls="--", label="ensemble")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {metric}" + (" (%)" if metric == "accuracy" else ""))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
