"""The synthetic competition dataset of paper Section 4.1 (Figure 1).

Each datapoint has a label ``Y ~ Uniform(C)`` and one of four types, drawn with
probabilities ``shared``, ``unique1``, ``unique2`` and the rest ``none``:

- shared: both modalities carry the label;
- unique-1 / unique-2: only that modality carries it;
- none: neither does.

In latent space ``X_m = N_m + s_m mu_m(Y)`` where modality m carries the label and
``X_m = N_m`` where it does not ("equating to noise"), with ``N_m ~ N(0, sigma_m^2 I)`` and
fixed class vectors ``mu_m(c)`` (random unit vectors). A fixed, seeded map then lifts each
modality to ``dim`` dimensions: ``x = W_1 z`` followed by ``depth_m - 1`` blocks
``x = W_k tanh(x)``, with Gaussian ``W_k`` scaled by ``1/sqrt(fan_in)``. Deeper maps make a
modality harder to learn. Everything is a function of ``seed``.

Families (``family``): ``gaussian`` is the above. ``signed`` differs in x2 only: a carrying
point is shifted by ``s_2 e mu_2(Y)`` with a random sign ``e = +-1``, so x2's class means are
all zero and its label shows only in ``|<z_2, mu_2(c)>|``: an encoder must learn a nonlinear
feature, which joint training, dominated by x1, has little reason to do.

Nuisance columns (``nuisance1``, ``nuisance2``, default 0): that many columns of
independent ``N(0, 1)`` noise appended to the modality after the lift, from their own seeded
stream, so the other columns are unchanged. They carry nothing about the label or the
latent (the Bayes ceiling is unchanged), but give a model of that modality room to memorise
its training points, as audio and video networks memorise theirs
(``docs/evidence/regime.md``, third round).
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from ..config import SyntheticSpec
from ..errors import ConfigError

KINDS = ("shared", "unique1", "unique2", "none")
FAMILIES = ("gaussian", "signed")


def make_synthetic(spec: SyntheticSpec) -> Dict[str, np.ndarray]:
    """Generates the dataset from ``spec`` (a :class:`SyntheticSpec`, or the ``DataConfig``
    that inherits it).

    Returns:
        ``x1``, ``x2``: (n, dim) float32 modalities; ``label``: (n,) int64; ``kind``: (n,)
        index into ``KINDS``; ``split``: (n,) ``train``/``val``/``test`` (70/15/15, seeded).
    """
    return _generate(spec)[0]


def class_vectors(spec: SyntheticSpec) -> Tuple[np.ndarray, np.ndarray]:
    """The unit class vectors ``mu_1``, ``mu_2``, each (num_classes, latent_dim), that
    :func:`make_synthetic` draws for ``spec`` (the same code path, so the Bayes ceiling of
    :mod:`mmbalance.data.bayes` sees exactly the generator's vectors)."""
    return _generate(spec)[1]


def _generate(spec: SyntheticSpec) -> Tuple[Dict[str, np.ndarray], Tuple[np.ndarray, np.ndarray]]:
    none = 1.0 - spec.shared - spec.unique1 - spec.unique2
    if min(spec.shared, spec.unique1, spec.unique2) < 0 or none < -1e-9:
        raise ConfigError("synthetic shared, unique1, unique2 must be >= 0 and sum to at most 1")
    signal, noise, depth = (spec.signal1, spec.signal2), (spec.noise1, spec.noise2), (spec.depth1, spec.depth2)
    if min(depth) < 1 or spec.num_classes < 2 or spec.n < 10:
        raise ConfigError("synthetic depth must be >= 1, num_classes >= 2 and n >= 10")
    if min(spec.nuisance1, spec.nuisance2) < 0:
        raise ConfigError("synthetic nuisance1 and nuisance2 must be >= 0")
    if spec.family not in FAMILIES:
        raise ConfigError(f"synthetic family {spec.family!r} is not one of {', '.join(FAMILIES)}")
    rng = np.random.default_rng(spec.seed)
    labels = rng.integers(0, spec.num_classes, spec.n)
    probs = np.array([spec.shared, spec.unique1, spec.unique2, max(none, 0.0)])
    kind = rng.choice(4, size=spec.n, p=probs / probs.sum())
    carries = [np.isin(kind, (0, 1)), np.isin(kind, (0, 2))]
    out: Dict[str, np.ndarray] = {}
    vectors = []
    for m in range(2):
        means = rng.standard_normal((spec.num_classes, spec.latent_dim))
        means /= np.linalg.norm(means, axis=1, keepdims=True)
        vectors.append(means)
        z = noise[m] * rng.standard_normal((spec.n, spec.latent_dim))
        shift = signal[m] * means[labels]
        if m == 1 and spec.family == "signed":
            shift *= rng.choice((-1.0, 1.0), size=(spec.n, 1))
        z += carries[m][:, None] * shift
        out[f"x{m + 1}"] = _lift(z, spec.dim, depth[m], rng).astype(np.float32)
    for m, extra in enumerate((spec.nuisance1, spec.nuisance2)):
        if extra:  # their own stream: the columns above stay bit-identical to nuisance 0
            noise_cols = np.random.default_rng([spec.seed, 7919, m]).standard_normal((spec.n, extra))
            out[f"x{m + 1}"] = np.concatenate([out[f"x{m + 1}"], noise_cols.astype(np.float32)], axis=1)
    out["label"] = labels.astype(np.int64)
    out["kind"] = kind.astype(np.int64)
    out["split"] = _split(spec.n, rng)
    return out, (vectors[0], vectors[1])


def _lift(z: np.ndarray, dim: int, depth: int, rng: np.random.Generator) -> np.ndarray:
    x = z @ (rng.standard_normal((z.shape[1], dim)) / np.sqrt(z.shape[1]))
    for _ in range(depth - 1):
        x = np.tanh(x) @ (rng.standard_normal((dim, dim)) / np.sqrt(dim))
    return x


def _split(n: int, rng: np.random.Generator) -> np.ndarray:
    order = rng.permutation(n)
    split = np.empty(n, dtype="<U5")
    n_train, n_val = int(0.7 * n), int(0.15 * n)
    split[order[:n_train]] = "train"
    split[order[n_train:n_train + n_val]] = "val"
    split[order[n_train + n_val:]] = "test"
    return split
