"""``method.init=unimodal``: one stage mechanism for every method, the encoder
learning-rate scale, unipre_finetuned as joint training from unimodal stages, and stages
cached by configuration."""

from __future__ import annotations

import pytest
import torch

from mmbalance import ConfigError, MLPEncoder, MultimodalModel
from mmbalance.engine import RunDir
from mmbalance.methods import REGISTRY, get_method
from mmbalance.training import train
from mmbalance.training.module import BalanceModule

from ..conftest import tiny_config


def test_every_method_has_init_and_the_defaults_say_how_it_starts():
    for name, cls in REGISTRY.items():
        hp = cls.Hyperparameters()
        assert hp.encoder_lr_scale == 0.1 and hp.stage_lr is None, name
        expected = "unimodal" if name in ("ensemble", "ume", "unipre_frozen", "unipre_finetuned") else "scratch"
        assert hp.init == expected, name
        teachers = name == "umt"  # its stages train frozen teachers, whatever the student starts from
        assert bool(cls.stages(["a", "b"], hp)) == (expected == "unimodal" or teachers), name
    mcr = get_method("mcr")
    assert [s.name for s in mcr.stages(["a", "b"], mcr.Hyperparameters(init="unimodal"))] == ["unimodal_a",
                                                                                              "unimodal_b"]


def test_impossible_init_is_one_clear_error():
    model = MultimodalModel({"a": MLPEncoder(2, 2), "b": MLPEncoder(2, 2)}, 3)
    for name, init in (("unimodal", "unimodal"), ("unipre_frozen", "scratch"), ("ensemble", "scratch")):
        cls = get_method(name)
        with pytest.raises(ConfigError, match=f"method '{name}': method.init '{init}'"):
            cls(model, cls.Hyperparameters(init=init))
    with pytest.raises(ConfigError, match="method.init"):
        tiny_config("mcr", method__init="pretrained")  # type check passes; the method rejects it
        get_method("mcr")(model, get_method("mcr").Hyperparameters(init="pretrained"))


@pytest.mark.parametrize("name", ["mcr", "mlb", "mslr"])
def test_encoders_from_stages_learn_at_the_scaled_rate(name):
    cls = get_method(name)
    cfg = tiny_config(name, method__init="unimodal", method__encoder_lr_scale=0.25, optim__lr=0.004)
    model = MultimodalModel({"x1": MLPEncoder(4, 3), "x2": MLPEncoder(5, 3)}, 5)
    module = BalanceModule(cls(model, cfg.hparams), cfg)
    optimizer = module.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    optimizer = optimizer[0][0] if isinstance(optimizer, tuple) else optimizer
    encoder_ids = {id(p) for m in model.modalities for p in model.modality_parameters(m)}
    seen, factors = set(), set()
    for group in optimizer.param_groups:
        ids = {id(p) for p in group["params"]}
        assert ids <= encoder_ids or not ids & encoder_ids  # encoders never share a group
        assert group["init_scale"] == (0.25 if ids <= encoder_ids else 1.0)
        factors.add(round(group["lr"] / (0.004 * group["lr_scale"] * group["init_scale"]), 9))
        seen |= ids
    assert encoder_ids <= seen and len(factors) == 1  # same schedule factor everywhere


def _encoders(path):
    return {k: v for k, v in RunDir.method_state(path).items() if k.startswith("model.encoders.")}


def test_mcr_from_unimodal_stages_loads_them_and_finetunes(tmp_path):
    metrics = train(tiny_config("mcr", method__init="unimodal", method__num_permutations=2,
                                method__stage_lr=0.005, trainer__max_epochs=2), tmp_path)
    assert set(metrics["stages"]) == {"unimodal_x1", "unimodal_x2"}
    run = RunDir(tmp_path)
    assert run.stage("unimodal_x1").read_config()["optim"]["lr"] == 0.005  # the stages' own rate
    assert run.read_config()["optim"]["lr"] != 0.005
    stage = {**_encoders(run.stage("unimodal_x1").best_checkpoint),
             **_encoders(run.stage("unimodal_x2").best_checkpoint)}
    stage = {k: v for k, v in stage.items() if ".x1." in k or ".x2." in k}
    assert stage
    final = _encoders(run.last_checkpoint)
    assert any(not torch.equal(final[k], v) for k, v in stage.items())  # finetuned, not frozen


def test_unipre_finetuned_is_joint_from_unimodal_stages(tmp_path):
    a = train(tiny_config("unipre_finetuned", trainer__max_epochs=2), tmp_path / "unipre")
    b = train(tiny_config("joint", method__init="unimodal", trainer__max_epochs=2), tmp_path / "joint")
    assert a["test"] == b["test"] and a["val"] == b["val"]


def test_stages_are_trained_once_per_configuration(tmp_path):
    cache = tmp_path / "cache"
    first = train(tiny_config("unipre_finetuned", trainer__max_epochs=2, trainer__stage_cache=str(cache)),
                  tmp_path / "a")
    second = train(tiny_config("ensemble", trainer__max_epochs=2, trainer__stage_cache=str(cache)), tmp_path / "b")
    assert sorted(p.name.rsplit("-", 1)[0] for p in cache.iterdir() if p.is_dir()) == ["unimodal_x1", "unimodal_x2"]
    assert (tmp_path / "b" / "stages" / "unimodal_x1").is_symlink()
    assert first["stages"] == second["stages"]
    uncached = train(tiny_config("unipre_finetuned", trainer__max_epochs=2), tmp_path / "c")
    assert uncached["test"] == first["test"]  # the cache changes nothing but the time
    train(tiny_config("unipre_finetuned", trainer__max_epochs=2, seed=1, trainer__stage_cache=str(cache)),
          tmp_path / "d")
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 4  # another seed: other stages


def test_a_standalone_unimodal_run_is_the_stage_the_pipelines_reuse(tmp_path):
    """A unimodal run with a stage's configuration enters the cache; the methods starting
    from unimodal models then train no stage and end exactly as with their own stages."""
    cache = tmp_path / "cache"
    solo = {m: train(tiny_config("unimodal", method__modality=m, trainer__max_epochs=2,
                                 trainer__stage_cache=str(cache)), tmp_path / f"unimodal_{m}")
            for m in ("x1", "x2")}
    entries = sorted(p for p in cache.iterdir() if p.is_dir())
    assert [p.name.rsplit("-", 1)[0] for p in entries] == ["unimodal_x1", "unimodal_x2"]
    for p in entries:  # the run itself, its best checkpoint the same file
        m = p.name.split("-")[0].split("_")[1]
        assert RunDir(p).read_metrics() == RunDir(tmp_path / f"unimodal_{m}").read_metrics()
        assert (p / "checkpoints" / "best.ckpt").read_bytes() == \
            (tmp_path / f"unimodal_{m}" / "checkpoints" / "best.ckpt").read_bytes()
    def files():  # the locks are opened (touched) by every user; the entries must not change
        return {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.suffix != ".lock"}
    mtimes = files()
    cached = train(tiny_config("mcr", method__init="unimodal", trainer__max_epochs=2,
                               trainer__stage_cache=str(cache)), tmp_path / "mcr")
    assert files() == mtimes and len(mtimes) > 10  # nothing trained into the cache
    assert {k: v["test"] for k, v in cached["stages"].items()} == {f"unimodal_{m}": solo[m]["test"]
                                                                    for m in ("x1", "x2")}
    own = train(tiny_config("mcr", method__init="unimodal", trainer__max_epochs=2), tmp_path / "mcr_own")
    scores = lambda run: {k: (v["val"], v["test"]) for k, v in run["stages"].items()}  # noqa: E731
    assert scores(own) == scores(cached) and own["test"] == cached["test"] and own["val"] == cached["val"]
    other = train(tiny_config("unimodal", method__modality="x1", trainer__max_epochs=2, optim__lr=0.01,
                              trainer__stage_cache=str(cache)), tmp_path / "other_lr")
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 3 and other["method"] == "unimodal"
    again = train(tiny_config("unimodal", method__modality="x1", trainer__max_epochs=2,
                              trainer__stage_cache=str(cache)), tmp_path / "again")
    assert again["test"] == solo["x1"]["test"] and len([p for p in cache.iterdir() if p.is_dir()]) == 3


def test_a_stage_cache_that_cannot_be_written_does_not_fail_the_run(tmp_path):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    with pytest.warns(UserWarning, match="not entered into the stage cache"):
        metrics = train(tiny_config("unimodal", method__modality="x1", trainer__max_epochs=1,
                                    trainer__stage_cache=str(blocker)), tmp_path / "run")
    assert metrics["method"] == "unimodal" and RunDir(tmp_path / "run").is_finished()


def test_a_unimodal_run_holds_its_stage_lock_while_it_trains_unless_another_process_has_it(tmp_path):
    import fcntl
    from mmbalance.training.run import _StageEntry
    cfg = tiny_config("unimodal", method__modality="x1", trainer__stage_cache=str(tmp_path / "cache"))

    def free(lock) -> bool:  # a second open file: flock conflicts with it even in this process
        with open(lock, "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(handle, fcntl.LOCK_UN)
            return True

    with _StageEntry(cfg, RunDir(tmp_path / "run")) as entry:  # a pipeline needing it waits meanwhile
        assert entry._handle is not None and not free(entry._lock)
    assert free(entry._lock)
    with open(entry._lock, "w") as other:  # another process trains this stage: no waiting for it
        fcntl.flock(other, fcntl.LOCK_EX)
        with _StageEntry(cfg, RunDir(tmp_path / "run")) as entry:
            assert entry._handle is None
    assert _StageEntry(cfg, RunDir(entry.cached.path)).cached is None  # the stage trained into the cache
    assert _StageEntry(tiny_config("joint", trainer__stage_cache=str(tmp_path / "cache")),
                       RunDir(tmp_path / "j")).cached is None
    assert _StageEntry(tiny_config("unimodal", trainer__stage_cache=str(tmp_path / "cache")),
                       RunDir(tmp_path / "u")).cached is None  # no modality: the run fails, no lock is made
