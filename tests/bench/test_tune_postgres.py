"""Two `mmbalance tune` workers share one study on a real PostgreSQL server.

The fixture starts a throw-away cluster with ``initdb`` and ``pg_ctl`` (Debian's
``postgresql`` package) on a free loopback port, with a password, as an unprivileged user
when the test runs as root (PostgreSQL refuses root), and removes it afterwards. Without
those programs or the driver the test skips with one line saying what to install;
``.ci/run`` installs the package when it is missing.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import optuna
import pytest

from mmbalance.config import load_yaml

from .test_tune import TINY_BASE, _launch, claims_race

ENABLE = "install Debian's postgresql package (apt-get install postgresql) to run it"
PASSWORD = "tune-secret"


def _programs():
    """``initdb`` and ``pg_ctl``: on PATH, else in Debian's /usr/lib/postgresql/<version>/bin."""
    found = [shutil.which("initdb"), shutil.which("pg_ctl")]
    if all(found):
        return found
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(re.sub(r"\D", "", d) or 0),
                         reverse=True):
        if os.access(f"{folder}/initdb", os.X_OK) and os.access(f"{folder}/pg_ctl", os.X_OK):
            return [f"{folder}/initdb", f"{folder}/pg_ctl"]
    return None


def _unprivileged():
    """``runuser -u USER --`` when running as root (initdb refuses root), else nothing."""
    if os.geteuid() != 0:
        return [], None
    runuser = shutil.which("runuser")
    for user in ("postgres", "nobody"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            continue
        if runuser:
            return [runuser, "-u", user, "--"], user
    pytest.skip("PostgreSQL test: running as root without runuser or a 'postgres'/'nobody' account to drop to")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    programs = _programs()
    if programs is None:
        pytest.skip(f"PostgreSQL test: initdb and pg_ctl not found; {ENABLE}")
    psycopg2 = pytest.importorskip("psycopg2", reason="PostgreSQL test: no driver; pip install 'mmbalance[postgres]'")
    initdb, pg_ctl = programs
    as_user, user = _unprivileged()
    base = Path(tempfile.mkdtemp(prefix="mmbalance-pg-"))  # not under pytest's root-only tmp folder
    data = base / "data"
    try:
        if user:
            shutil.chown(base, user)
        (base / "pw").write_text(PASSWORD + "\n")
        run = dict(cwd=base, check=True, capture_output=True, text=True, timeout=120)
        subprocess.run([*as_user, initdb, "-D", str(data), "-U", "mmbalance", f"--pwfile={base / 'pw'}",
                        "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--no-sync"], **run)
        for attempt in range(3):  # a free port can be taken between the probe and the start
            port = _free_port()
            options = (f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={base} "
                       "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")  # throw-away data
            started = subprocess.run([*as_user, pg_ctl, "-D", str(data), "-l", str(base / "server.log"), "-w",
                                      "-t", "60", "-o", options, "start"], **{**run, "check": False})
            if started.returncode == 0:
                break
        else:
            pytest.fail(f"pg_ctl start failed: {started.stderr}\n{(base / 'server.log').read_text()[-2000:]}")
        connection = psycopg2.connect(host="127.0.0.1", port=port, user="mmbalance", password=PASSWORD,
                                      dbname="postgres")
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("CREATE DATABASE tune")
        connection.close()
        yield f"postgresql+psycopg2://mmbalance:{PASSWORD}@127.0.0.1:{port}/tune"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], cwd=base,
                           capture_output=True, timeout=120)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("how", ["fork", pytest.param("subprocess", marks=pytest.mark.slow)])
def test_two_tune_workers_share_one_postgresql_study(postgres_url, tmp_path, how, one_thread):
    """``fork``: two processes forked from the test, each running the ``mmbalance tune``
    command (server included: 20 s in the suite, 50 s alone, on the shared 2-core machine);
    ``subprocess`` (slow, 100 s alone): two fresh interpreters, as two machines start them."""
    total = 6  # the study's budget, which the two workers share
    argv = ["tune", "--data", "synthetic", "--method", "joint", "--trials", str(total), "--storage", postgres_url,
            "--out", str(tmp_path), "--set", *[f"{k}={v}" for k, v in TINY_BASE.items()]]
    outs = _launch(how, argv, tmp_path)
    ran = [json.loads(re.search(r"this process ran trials (\[.*?\])", o).group(1)) for o in outs]
    assert len(ran[0]) + len(ran[1]) == total and not set(ran[0]) & set(ran[1])

    study = optuna.load_study(study_name="joint", storage=postgres_url)
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == list(range(total)) == sorted(ran[0] + ran[1])  # none lost, none twice
    assert len({t._trial_id for t in trials}) == total
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)

    # The best configuration: one file, equal to the study's best, written once in final form.
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".yaml", ".json") or ".tmp" in p.name) == [
        "joint.json", "joint.yaml"]
    best = study.best_trial
    text = (tmp_path / "joint.yaml").read_text()
    assert f"(trial {best.number})" in text and "provisional" not in text
    assert f"best of {total} finished trials ({total} complete, 0 pruned, 0 failed)" in text
    assert load_yaml(tmp_path / "joint.yaml")["optim.lr"] == best.params["optim.lr"]
    info = json.loads((tmp_path / "joint.json").read_text())
    assert (info["best_trial"], info["trials"], info["running"]) == (best.number, total, [])
    final = [line for o in outs for line in o.splitlines() if line == f"wrote {tmp_path / 'joint.yaml'}"]
    # Exactly one worker writes the final file, once: the other wrote a provisional file while
    # a trial was running or claimed, or found the final write claimed.
    assert len(final) == 1, outs
    assert study.user_attrs["mmbalance.budget"] == study.user_attrs["mmbalance.final"]["budget"] == total
    assert PASSWORD not in "".join(outs)


def test_trial_claims_and_the_final_write_are_atomic_on_postgresql(postgres_url, tmp_path):
    """The compare-and-set of study attributes under PostgreSQL's row locking (READ COMMITTED)."""
    claims_race(postgres_url, tmp_path)
