"""``mmbalance bench synthetic``: the competition sweep of paper Section 4.1 / Figure 1.

The ratio U1/S of the synthetic data (``data.unique1`` / ``data.shared``) moves from
S-dominated to U1-dominated with U2 = 0.1 fixed and S + U1 = 0.9, for every registered
method and several seeds. Fairness: every job of a sweep gets the same data size, epochs,
early-stopping rule and tuning budget (``SweepSettings.run_overrides``); a method's own
hyperparameters are its defaults, or the tuned ones (``--tuned``), tuned for every method
with the same number of trials (paper A.4).

The jobs run on the shared, resumable runner of :mod:`mmbalance.bench.runner`; the Bayes
ceiling of every setting is computed once per data seed (:func:`ceilings`). Unimodal models
train once per cell and seed in ``OUT/stage_cache``: the ``unimodal-<m>`` runs enter it, and
``ensemble``, ``unipre_*`` and ``mcr`` (``method.init=unimodal``) start from those very models.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .runner import (Job, Runner, SweepOutcome, Variant, load_tuned, method_variants, row_from_metrics, run_job,
                     run_sweep)

__all__ = ["DEFAULT_GRID", "DEFAULT_SETTINGS", "QUICK_GRID", "QUICK_SETTINGS", "TUNE_POINT", "Job", "Runner",
           "SweepOutcome", "SweepSettings", "Variant", "ceilings", "load_tuned", "make_jobs", "method_variants",
           "row_from_metrics", "run_job", "run_sweep"]

#: (shared, unique1) points, S-dominated to U1-dominated; U1/S = 0.125, 0.5, 1, 2, 8.
DEFAULT_GRID: Tuple[Tuple[float, float], ...] = ((0.8, 0.1), (0.6, 0.3), (0.45, 0.45), (0.3, 0.6), (0.1, 0.8))
QUICK_GRID: Tuple[Tuple[float, float], ...] = ((0.8, 0.1), (0.45, 0.45), (0.1, 0.8))
#: Where ``--trials-per-method`` tunes: the paper's headline, most competitive setting.
TUNE_POINT = (0.1, 0.8)
SYNTHETIC_MODALITIES = ("x1", "x2")


@dataclass(frozen=True)
class SweepSettings:
    """What every run of a sweep shares: the grid, the seeds, the data size and the
    training budget (epochs and early stopping)."""

    grid: Tuple[Tuple[float, float], ...] = DEFAULT_GRID
    unique2: float = 0.1
    seeds: Tuple[int, ...] = (0, 1, 2, 3, 4)  # >= 5, as bench compare
    n: int = 6000
    max_epochs: int = 20
    patience: int = 5
    extra: Tuple[Tuple[str, Any], ...] = ()  # further overrides for every run (``--set``)
    #: where unimodal models are trained once per configuration for all the methods that
    #: start from them (``trainer.stage_cache``); ``bench synthetic`` uses ``OUT/stage_cache``
    stage_cache: str = ""

    def run_overrides(self, shared: float, unique1: float, seed: int) -> Dict[str, Any]:
        """The overrides of one grid cell; the seed draws both the data and the run."""
        out = {"trainer.stage_cache": self.stage_cache} if self.stage_cache else {}
        return {**out, **dict(self.extra), "seed": seed, "data.seed": seed, "data.n": self.n, "data.shared": shared,
                "data.unique1": unique1, "data.unique2": self.unique2, "trainer.max_epochs": self.max_epochs,
                "trainer.patience": self.patience, "trainer.progress": False, "trainer.final_probe": True}


DEFAULT_SETTINGS = SweepSettings()
QUICK_SETTINGS = SweepSettings(grid=QUICK_GRID, seeds=(0,), n=1500, max_epochs=6, patience=2)


# --------------------------------------------------------------------------- presets
@dataclass(frozen=True)
class Preset:
    """A named generator-and-optimizer setting for ``bench synthetic`` and ``bench compare``
    (``--preset NAME``). ``overrides`` go to every run (``data.*`` other than the grid's
    ``shared``/``unique1``, and ``optim.*``); ``n`` and ``seeds`` are the data size and seeds
    it was sized for (``--n``/``--seeds`` still win, and ``--set`` wins over ``overrides``).

    Attributes:
        met: whether the setting met the competition criterion of
            ``docs/evidence/regime_fusion.md`` (None: not a competition preset).
    """

    name: str
    purpose: str
    overrides: Tuple[Tuple[str, Any], ...] = ()
    n: Optional[int] = None
    seeds: Optional[Tuple[int, ...]] = None
    met: Optional[bool] = None

    def help(self) -> str:
        verdict = {None: "", True: " Met the competition criterion.",
                   False: " It DID NOT MEET the competition criterion (power fails): the best-documented "
                   "candidate only."}[self.met]
        return f"{self.name}: {self.purpose}.{verdict}"


#: the generator of the competition presets (regime_fusion.md's G2; depth2 3 is the default, pinned)
_COMPETITION = (("data.family", "signed"), ("data.latent_dim", 50), ("data.signal2", 4.0), ("data.depth2", 3))
#: the headline cell where the competition presets were chosen (``bench compare --data synthetic``)
HEADLINE_CELL = (("data.shared", 0.1), ("data.unique1", 0.8))
PRESETS: Dict[str, Preset] = {p.name: p for p in (
    Preset("default", "today's generator and training defaults (gaussian family, Adam lr 1e-3); nothing overridden"),
    Preset("competition-adam", "competition at the fusion under Adam (the paper's optimizer, lr 1e-3), n 20,000, "
           "seeds 0-9: at U1/S = 8 joint training is 6.2 points below the Bayes ceiling and 19.0 +- 2.6 points below "
           "the x2-only model on the points only x2 carries, each unimodal model within 3 points of its limit, "
           "paired half-widths 0.96 overall and 2.61 on those points (docs/evidence/regime_fusion.md)",
           _COMPETITION, n=20000, seeds=tuple(range(10)), met=True),
    Preset("competition-sgd", "the same generator, n and seeds under SGD with momentum 0.9 (OGM-GE's official "
           "optimizer), lr 0.03 chosen on joint training's validation accuracy alone: room 7.1 points, unique2 deficit "
           "21.5 +- 3.6, but paired half-widths 1.23 overall and 3.62 on unique2 points at 10 seeds "
           "(docs/evidence/regime_fusion.md)",
           _COMPETITION + (("optim.name", "sgd"), ("optim.lr", 0.03), ("optim.momentum", 0.9)),
           n=20000, seeds=tuple(range(10)), met=False),
)}


def compare_preset(name: str, data_spec: str, extra: Mapping[str, Any]) -> Tuple[Dict[str, Any], Optional[Tuple[int, ...]]]:
    """``bench compare``'s overrides under preset ``name``: the headline cell, the preset's
    overrides and data size, then ``extra`` (``--set``, which wins); and the preset's seeds.
    Any preset other than ``default`` needs ``data_spec == "synthetic"``."""
    from ..errors import ConfigError
    preset = get_preset(name)
    if name == "default":
        return dict(extra), None
    if data_spec != "synthetic":
        raise ConfigError(f"--preset {name} sets the synthetic generator; use it with --data synthetic")
    out = {**dict(HEADLINE_CELL), **dict(preset.overrides), **({"data.n": preset.n} if preset.n else {}), **extra}
    return out, preset.seeds


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name is one ConfigError naming the valid ones."""
    from ..errors import ConfigError, did_you_mean
    if name not in PRESETS:
        raise ConfigError(f"unknown --preset {name!r}; {did_you_mean(name, PRESETS)}valid: {', '.join(PRESETS)}")
    return PRESETS[name]


def make_jobs(settings: SweepSettings, variants: Sequence[Variant],
              tuned: Optional[Mapping[str, Tuple[Dict[str, Any], int]]] = None) -> List[Job]:
    """The sweep's jobs, seed-major so that an interrupted sweep has whole seeds.

    Args:
        tuned: label -> (``optim.*``/``method.*`` overrides, trials spent), from :func:`load_tuned`.
    """
    jobs = []
    for seed in settings.seeds:
        for shared, unique1 in settings.grid:
            for v in variants:
                hp, trials = (tuned or {}).get(v.label, ({}, 0))
                overrides = {**hp, **dict(v.fixed), **settings.run_overrides(shared, unique1, seed)}
                cell = (("shared", shared), ("unique1", unique1), ("unique2", settings.unique2))
                jobs.append(Job(v, seed, tuple(sorted(overrides.items())), trials, "synthetic", cell,
                                f"S{shared:g}_U1{unique1:g}_U2{settings.unique2:g}"))
    return jobs




# --------------------------------------------------------------------------- the ceiling
#: Monte Carlo draws per Bayes ceiling: 100,000 keep its standard error near 0.15 points
#: (sqrt(0.6 * 0.4 / 1e5) at a 60 % ceiling), below the differences the tables resolve.
CEILING_DRAWS = 100_000


def ceilings(jobs: Sequence[Job], out: str | Path, draws: int = CEILING_DRAWS,
             log=print) -> Dict[Tuple[Tuple[float, float], int], Dict[str, float]]:
    """The Bayes ceiling of every (setting, data seed) of ``jobs`` on synthetic data, computed
    once and cached in ``out/ceilings.json`` (keyed by every ``data.*`` value that shapes it).

    Returns:
        ``(cell, run seed)`` -> ``{"both", "x1", "x2"}`` accuracies (fractions); the cell is
        ``(shared, unique1)`` on the grid and ``("synthetic",)`` for ``bench compare``.
    """
    from ..config import build_config
    from ..data.bayes import bayes_accuracy
    from ..methods import get_method
    path = Path(out) / "ceilings.json"
    cache = json.loads(path.read_text()) if path.exists() else {}
    result, changed = {}, False
    for job in jobs:
        if job.data_spec != "synthetic":
            continue
        data = {k: v for k, v in job.overrides if k.startswith("data.")}  # only the data shapes it
        spec = build_config("joint", "synthetic", data, get_method("joint").Hyperparameters).data
        key = json.dumps({f: getattr(spec, f) for f in _SPEC_FIELDS} | {"draws": draws}, sort_keys=True)
        if key not in cache:
            c = bayes_accuracy(spec, draws)
            cache[key] = {"both": c.both, "x1": c.x1, "x2": c.x2, "se": max(c.both_se, c.x1_se, c.x2_se)}
            changed = True
            log(f"Bayes ceiling S={spec.shared:g} U1={spec.unique1:g} data seed {spec.seed}: both "
                f"{100 * c.both:.2f}, x1 {100 * c.x1:.2f}, x2 {100 * c.x2:.2f} ({draws} draws)")
        cell = (job.shared, job.unique1) if job.shared is not None else (job.data_spec,)
        result[(cell, job.seed)] = {k: cache[key][k] for k in ("both", "x1", "x2")}
    if changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
        tmp.replace(path)
    return result


def _spec_fields() -> Tuple[str, ...]:
    import dataclasses
    from ..config import SyntheticSpec
    return tuple(f.name for f in dataclasses.fields(SyntheticSpec))


_SPEC_FIELDS = _spec_fields()
