"""``mmbalance bench compare``: every selected method on one dataset, the same table as the sweep.

A user's ``.npz``/``.h5``, a built-in dataset (``mfeat``, ``cremad``, ...) or ``synthetic``.
Every method gets the same epochs, early stopping and tuning budget
(:meth:`CompareSettings.run_overrides`); ``unimodal`` runs of every modality are added, since
the competition gap of a method is measured against them. Jobs run on the shared runner of
:mod:`mmbalance.bench.runner` (resumable, ``--workers``), with unimodal stages (``ensemble``,
``unipre_*``, ``method.init=unimodal``) cached in ``OUT/stage_cache`` so each trains once per
configuration: the ``unimodal-<m>`` runs go first in each seed and enter the cache, so those
methods start from the very models of the unimodal rows.

The data split is fixed (``data.seed``, ``--data-seed``) and the seeds vary the run
(initialisation, batch order): tuning (``--trials-per-method``) then selects on that split's
validation rows only and never sees a test row of any seed. The intervals are therefore over
training randomness on one split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .runner import Job, Variant, method_variants

DEFAULT_SEEDS = (0, 1, 2, 3, 4)  # >= 5 seeds: fewer leave the paired CIs too wide to tell methods apart
#: The training budget every method gets: the code defaults of ``trainer.max_epochs`` and
#: ``trainer.patience``, written into each run so that they show in its fingerprint.
DEFAULT_EPOCHS, DEFAULT_PATIENCE = 30, 8


@dataclass(frozen=True)
class CompareSettings:
    """What every run of a comparison shares."""

    data_spec: str
    seeds: Tuple[int, ...] = DEFAULT_SEEDS
    data_seed: int = 0
    max_epochs: int = DEFAULT_EPOCHS
    patience: int = DEFAULT_PATIENCE
    stage_cache: str = ""
    extra: Tuple[Tuple[str, Any], ...] = ()  # further overrides for every run (``--set``)

    def run_overrides(self, seed: int) -> Dict[str, Any]:
        out = {**dict(self.extra), "seed": seed, "data.seed": self.data_seed, "trainer.max_epochs": self.max_epochs,
               "trainer.patience": self.patience, "trainer.progress": False, "trainer.final_probe": True}
        if self.stage_cache:
            out["trainer.stage_cache"] = self.stage_cache
        return out


def compare_variants(selected: Optional[Sequence[str]], modalities: Sequence[str]) -> List[Variant]:
    """The selected methods, plus ``unimodal-<m>`` for every modality (the gaps' reference)."""
    chosen = method_variants(selected, modalities)
    labels = {v.label for v in chosen}
    extra = [v for v in method_variants(["unimodal"], modalities) if v.label not in labels]
    return chosen + extra


def make_compare_jobs(settings: CompareSettings, variants: Sequence[Variant],
                      tuned: Optional[Mapping[str, Tuple[Dict[str, Any], int]]] = None) -> List[Job]:
    """Seed-major jobs (an interrupted comparison has whole seeds); within a seed the
    ``unimodal`` runs go first, so that with the stage cache the methods starting from
    unimodal models (``ensemble``, ``unipre_*``, ``mcr``) reuse those very runs instead of
    training the same models again. The report keeps the order of ``variants``."""
    jobs = []
    first = sorted(variants, key=lambda v: v.method != "unimodal")  # stable: otherwise as given
    for seed in settings.seeds:
        for v in first:
            hp, trials = (tuned or {}).get(v.label, ({}, 0))
            overrides = {**hp, **dict(v.fixed), **settings.run_overrides(seed)}
            jobs.append(Job(v, seed, tuple(sorted(overrides.items())), trials, settings.data_spec))
    return jobs


def data_modalities(data_spec: str, overrides: Mapping[str, Any]) -> List[str]:
    """The modality names of ``data_spec`` under ``overrides`` (loads the data once)."""
    from ..config import build_config
    from ..methods import get_method
    from ..training.build import build_data
    return list(build_data(build_config("joint", data_spec, dict(overrides), get_method("joint").Hyperparameters)).shapes)


def runnable(variants: Sequence[Variant], selected: Optional[Sequence[str]], data_spec: str,
             overrides: Mapping[str, Any], what: str, log=print) -> List[Variant]:
    """The variants whose method can run on the benchmark's model (built once from ``data_spec``
    under ``overrides``; every method gets the same model). A method whose requirements it does
    not meet (greedy: encoders with stages, where the benchmark's are MLPs) is left out with one
    note line when every method runs, and is an error when ``selected`` names it."""
    from ..config import build_config
    from ..errors import ConfigError
    from ..methods import get_method
    from ..training.build import build_data, build_model
    cfg = build_config("joint", data_spec, {k: v for k, v in overrides.items() if not k.startswith("method.")},
                       get_method("joint").Hyperparameters)
    model = build_model(build_data(cfg), cfg)
    named = {s.strip() for item in selected or () for s in item.split(",")}
    kept = []
    for v in variants:
        try:
            get_method(v.method).check_requirements(model)
        except ConfigError as err:
            if v.method in named or v.label in named:
                raise ConfigError(f"{what}: {err}") from None
            log(f"{what}: {v.label} left out: {err}")
            continue
        kept.append(v)
    return kept
