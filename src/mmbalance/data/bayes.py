"""The Bayes-optimal accuracy (the "ceiling") of the synthetic competition data.

The lift from latent space to the observed ``dim`` dimensions is injective (a full-rank
linear map, then square Gaussian maps after ``tanh``), so the best any classifier can do on
the observed data equals the best it can do on the latents ``z_1, z_2``. There the
posterior is exact (paper Section 4.1, the four datapoint types):

    p(y | z_1, z_2) ∝ sum_t pi_t N(z_1; a_1(t) s_1 mu_1(y), sigma_1^2 I) N(z_2; a_2(t) s_2 mu_2(y), sigma_2^2 I)

with ``a_m(t) = 1`` when type ``t`` carries the label in modality ``m``. Dividing by the
label-free density ``N(z_m; 0, sigma_m^2 I)`` leaves per-modality log-likelihood ratios
``l_m(c) = s_m <z_m, mu_m(c)> / sigma_m^2 - s_m^2 / (2 sigma_m^2)`` (unit ``mu``), so

    log p(y=c | z) = logsumexp_t [log pi_t + a_1(t) l_1(c) + a_2(t) l_2(c)] + const.

"x1 alone" marginalises ``z_2`` out: the types collapse to "x1 carries" (shared + unique1)
and "x1 does not" (unique2 + none). The accuracy of the Bayes rule is
``E[max_c p(c | z)]``, estimated by Monte Carlo over draws of ``(y, type, z)``; the max
posterior has a lower variance than counting hits of the argmax, and its standard error
is reported with it.

The ``signed`` family shifts a carrying x2 by ``+-s_2 mu_2(y)`` with equal odds, so its
likelihood is a two-component mixture and ``l_2(c) = log cosh(s_2 <z_2, mu_2(c)> / sigma_2^2)
- s_2^2 / (2 sigma_2^2)``; everything else is unchanged, so the ceiling stays exact.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence, Tuple

import numpy as np

from .synthetic import SyntheticSpec, class_vectors

#: a_m(t) for t in KINDS = (shared, unique1, unique2, none).
CARRIES = np.array([[1, 1], [1, 0], [0, 1], [0, 0]], dtype=float)


class BayesCeiling(NamedTuple):
    """Bayes-optimal accuracies (fractions) with both modalities and with each alone, and
    their Monte Carlo standard errors."""

    both: float
    x1: float
    x2: float
    both_se: float
    x1_se: float
    x2_se: float
    draws: int


def type_priors(spec: SyntheticSpec) -> np.ndarray:
    """(4,) probabilities of shared, unique1, unique2, none, as the generator draws them."""
    none = max(1.0 - spec.shared - spec.unique1 - spec.unique2, 0.0)
    probs = np.array([spec.shared, spec.unique1, spec.unique2, none], dtype=float)
    return probs / probs.sum()


def log_likelihood_ratio(z: np.ndarray, means: np.ndarray, signal: float, noise: float,
                         signed: bool = False) -> np.ndarray:
    """``l(c) = log p(z | class c, carries) - log N(z; 0, sigma^2 I)``, where the carrying
    density is ``N(z; s mu_c, sigma^2 I)``, or with ``signed`` the equal mixture of
    ``N(z; +-s mu_c, sigma^2 I)``.

    Args:
        z: (N, d) latents of one modality.
        means: (C, d) class vectors.

    Returns:
        (N, C).
    """
    sq = (means ** 2).sum(1)
    proj = signal * z @ means.T / noise ** 2
    if signed:  # log cosh(a) = |a| + log1p(exp(-2|a|)) - log 2, stable for large |a|
        proj = np.abs(proj) + np.log1p(np.exp(-2 * np.abs(proj))) - np.log(2.0)
    return proj - 0.5 * signal ** 2 * sq[None, :] / noise ** 2


def modality_llr(spec: SyntheticSpec, m: int, z: np.ndarray, means: np.ndarray) -> np.ndarray:
    """:func:`log_likelihood_ratio` of modality ``m`` (0 or 1) under ``spec``'s family."""
    return log_likelihood_ratio(z, means, spec.signal[m], spec.noise[m], signed=_signed(spec, m))


def _signed(spec: SyntheticSpec, m: int) -> bool:
    return m == 1 and getattr(spec, "family", "gaussian") == "signed"


def log_posterior(llr1: np.ndarray, llr2: np.ndarray, priors: np.ndarray) -> np.ndarray:
    """Exact log p(y | z_1, z_2) over the four types (uniform class prior).

    Args:
        llr1, llr2: (N, C) per-modality log-likelihood ratios.
        priors: (4,) type probabilities (zeros allowed).

    Returns:
        (N, C) normalized log posteriors.
    """
    keep = priors > 0
    a, logp = CARRIES[keep], np.log(priors[keep])
    # (N, C, T): the log joint of class c and type t, up to a term common to all (c, t)
    terms = logp[None, None, :] + llr1[..., None] * a[:, 0] + llr2[..., None] * a[:, 1]
    scores = _logsumexp(terms, axis=2)
    return scores - _logsumexp(scores, axis=1)[:, None]


def log_posterior_alone(llr: np.ndarray, carries: float) -> np.ndarray:
    """Exact log p(y | z_m) with the other modality marginalised out.

    Args:
        llr: (N, C) log-likelihood ratios of modality m.
        carries: the probability that a point carries the label in modality m.
    """
    off = np.log(1.0 - carries) if carries < 1.0 else -np.inf
    on = np.log(carries) if carries > 0.0 else -np.inf
    scores = np.logaddexp(on + llr, off)
    return scores - _logsumexp(scores, axis=1)[:, None]


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    top = np.max(x, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    return np.squeeze(top, axis) + np.log(np.exp(x - top).sum(axis))


def sample_latents(spec: SyntheticSpec, means: Sequence[np.ndarray], count: int,
                   rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Draws ``count`` points of the latent model: labels, type indices, ``z_1``, ``z_2``."""
    labels = rng.integers(0, spec.num_classes, count)
    kind = rng.choice(4, size=count, p=type_priors(spec))
    zs = []
    for m in range(2):
        z = spec.noise[m] * rng.standard_normal((count, means[m].shape[1]))
        shift = spec.signal[m] * means[m][labels]
        if _signed(spec, m):
            shift *= rng.choice((-1.0, 1.0), size=(count, 1))
        z += CARRIES[kind, m][:, None] * shift
        zs.append(z)
    return labels, kind, zs[0], zs[1]


def bayes_accuracy(spec: SyntheticSpec, draws: int = 200_000, seed: int = 12345,
                   chunk: int = 50_000) -> BayesCeiling:
    """The Bayes-optimal accuracy of the generator at ``spec``, with both modalities and
    with each alone, using the class vectors :func:`make_synthetic` draws for ``spec``.

    Args:
        spec: the generator's settings (the class vectors depend on ``spec.seed`` and ``n``).
        draws: Monte Carlo draws of (label, type, latents).
        seed: the Monte Carlo stream's seed (independent of ``spec.seed``).
        chunk: draws per vectorised block (bounds memory).

    Returns:
        :class:`BayesCeiling`, fractions in [0, 1].
    """
    means = class_vectors(spec)
    priors = type_priors(spec)
    carries = (priors[0] + priors[1], priors[0] + priors[2])
    rng = np.random.default_rng(seed)
    sums, sq = np.zeros(3), np.zeros(3)
    done = 0
    while done < draws:
        count = min(chunk, draws - done)
        _, _, z1, z2 = sample_latents(spec, means, count, rng)
        l1, l2 = modality_llr(spec, 0, z1, means[0]), modality_llr(spec, 1, z2, means[1])
        for i, logp in enumerate((log_posterior(l1, l2, priors), log_posterior_alone(l1, carries[0]),
                                  log_posterior_alone(l2, carries[1]))):
            best = np.exp(logp.max(1))
            sums[i] += best.sum()
            sq[i] += (best ** 2).sum()
        done += count
    mean = sums / draws
    se = np.sqrt(np.maximum(sq / draws - mean ** 2, 0.0) / max(draws - 1, 1))
    return BayesCeiling(*map(float, mean), *map(float, se), draws)
