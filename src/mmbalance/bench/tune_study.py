"""A tuning study's storage, and how the ``tune`` workers that share it coordinate.

Storage: SQLite by default (``OUT/optuna.db``), or any SQLAlchemy URL (PostgreSQL) that
several machines reach; :func:`open_storage` makes workers that start together safe.

Budget: ``--trials N`` is the number of finished trials the *study* should hold (like
Optuna's ``MaxTrialsCallback``, not ``n_trials``, which counts one process's trials).
The study stores it (user attribute ``mmbalance.budget``), so every worker knows when no
more trials will come:

- workers that share a study run its trials between them until it holds ``N`` (finished
  means complete, pruned or failed); a study that holds them runs nothing, so a killed
  tuning resumes with the same command, and ``bench synthetic --trials-per-method N``
  tops each method's study up to ``N``;
- a worker given another ``N`` works to the larger of the two: a smaller one adopts the
  stored budget, a larger one raises it (the study is extended). Either way it logs one
  line saying so. ``--trials 0`` leaves the budget alone and only writes the file;
- before each trial a worker claims it (an atomic counter, ``mmbalance.claimed``), so
  the study never gets more than ``N`` trials, however the workers interleave; the
  storage numbers the trials, so none is lost or run twice;
- the final file is written exactly once: by the worker that finds, after its last
  trial, all ``N`` trials finished and wins the study's final-write claim
  (``mmbalance.final``, which also records who wrote it). A worker that ends while
  trials of others are still running, or claimed but not yet started, writes a
  ``# provisional`` file, and one that finds the final file already claimed writes
  nothing. Give workers on several machines one shared ``--out`` to see the final file
  everywhere; otherwise it is in the ``--out`` of the worker that wrote it.

The claims are compare-and-set updates of the study's user attributes (:class:`StudyAttrs`):
Optuna's ``study.set_user_attr`` is an upsert, with which two workers could both believe
they set a value first.
"""

from __future__ import annotations

import json
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from ..errors import ConfigError

#: the study's user attributes: its trial budget, the trials claimed towards it, the final write's claim
BUDGET_KEY, CLAIMED_KEY, FINAL_KEY = "mmbalance.budget", "mmbalance.claimed", "mmbalance.final"


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError("tuning needs optuna: pip install 'mmbalance[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def default_storage(out: Path) -> str:
    """The embedded default: a SQLite file in the output directory."""
    return f"sqlite:///{(out / 'optuna.db').resolve()}"


def open_storage(url: str):
    """An Optuna RDB storage. SQLite gets a long busy timeout (several writer processes);
    every storage gets heartbeats, so a trial of a killed worker is marked failed.

    Workers that start together race to create the schema (Optuna raises an integrity
    error in the loser): a file lock serialises that for SQLite files, and a failed
    attempt is retried for any URL.
    """
    optuna = _optuna()
    kwargs = {"connect_args": {"timeout": 300}} if url.startswith("sqlite") else {}
    for attempt in range(5):
        try:
            with _schema_lock(url), warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=30,
                                                  grace_period=120)
        except ImportError as exc:  # the URL's database driver (Optuna re-raises SQLAlchemy's)
            missing = getattr(exc.__cause__, "name", None) or "its database driver"
            hint = ("pip install 'mmbalance[postgres]'" if url.startswith("postgresql") and missing == "psycopg2"
                    else f"pip install {missing}")
            raise ConfigError(f"--storage {shown_url(url)} needs the database driver {missing}: {hint}") from None
        except Exception as exc:  # SQLAlchemy raises many types for a bad URL, a race, a dead server
            error = exc
            time.sleep(0.2 * (attempt + 1))
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    raise ConfigError(f"--storage {shown_url(url)} cannot be opened: {first}") from None


def shown_url(url: str) -> str:
    """The storage URL with its password hidden, for messages and logs."""
    try:
        from sqlalchemy.engine import make_url
        return repr(make_url(url).render_as_string(hide_password=True))
    except Exception:  # not a URL SQLAlchemy can parse: shown as given
        return repr(url)


@contextmanager
def _schema_lock(url: str) -> Iterator[None]:
    path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
    if not path or path == ":memory:":
        yield
        return
    with file_lock(Path(f"{path}.lock")):
        yield


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created), for processes sharing a folder."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        yield
        return
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


#: returned by a :meth:`StudyAttrs.update` decision: leave the value as it is
KEEP = object()


class StudyAttrs:
    """Atomic updates of one study's user attributes, made on the storage's tables.

    Optuna's ``study.set_user_attr`` is an upsert: two workers that both read "unset" and
    then set a value both believe that theirs is the one stored. :meth:`update` is
    compare-and-set instead: an INSERT, which the table's unique (study, key) constraint
    lets only one worker make, or an UPDATE conditioned on the value that was read (one
    statement, atomic in SQLite and PostgreSQL alike). The values are JSON, as Optuna
    writes them, so ``study.user_attrs`` shows them.
    """

    def __init__(self, storage, study_id: int) -> None:
        import sqlalchemy as sa
        self.engine, self.study_id = storage.engine, study_id
        self.table = sa.Table("study_user_attributes", sa.MetaData(),  # Optuna's RDB schema
                              sa.Column("study_user_attribute_id", sa.Integer, primary_key=True),
                              sa.Column("study_id", sa.Integer), sa.Column("key", sa.String(512)),
                              sa.Column("value_json", sa.Text))

    def _where(self, key: str):
        return (self.table.c.study_id == self.study_id) & (self.table.c.key == key)

    def _read(self, key: str) -> Optional[str]:
        import sqlalchemy as sa
        with self.engine.connect() as connection:
            return connection.execute(sa.select(self.table.c.value_json).where(self._where(key))).scalar()

    def get(self, key: str, default: Any = None) -> Any:
        text = self._read(key)
        return default if text is None else json.loads(text)

    def update(self, key: str, decide: Callable[[Any], Any]) -> Tuple[Any, bool]:
        """Sets ``key`` to ``decide(value)`` (``value`` None when unset) unless that is
        :data:`KEEP`. When another worker changes the value in between, nothing is written
        and ``decide`` is asked again with the new value. Returns the value now stored and
        whether this call stored it."""
        import sqlalchemy as sa
        for _ in range(1000):
            text = self._read(key)
            value = None if text is None else json.loads(text)
            new = decide(value)
            if new is KEEP:
                return value, False
            try:
                with self.engine.begin() as connection:
                    if text is None:
                        connection.execute(sa.insert(self.table).values(study_id=self.study_id, key=key,
                                                                        value_json=json.dumps(new)))
                        done = True
                    else:
                        changed = connection.execute(sa.update(self.table).where(
                            self._where(key) & (self.table.c.value_json == text)).values(value_json=json.dumps(new)))
                        done = changed.rowcount == 1
            except sa.exc.IntegrityError:  # another worker inserted it first
                done = False
            if done:
                return new, True
        raise RuntimeError(f"study attribute {key!r}: other workers changed it between each of 1000 reads and writes")


def join_budget(attrs: StudyAttrs, trials: int, log: Callable[[str], None]) -> int:
    """Stores ``trials`` as the study's budget, or keeps the stored one when it is larger;
    logs a line when the two differ. Returns the budget."""
    before: List[Any] = []

    def larger(stored):
        before[:] = [stored]
        return KEEP if stored is not None and stored >= trials else trials

    budget, raised = attrs.update(BUDGET_KEY, larger)
    if raised and before[0] is not None:
        log(f"budget raised from {before[0]} to {trials} trials")
    elif not raised and budget != trials:
        log(f"its budget is {budget} trials (this worker was given {trials}); working to {budget}")
    return budget


class TrialClaims:
    """Claims on the study's budget: a worker claims a trial before it asks Optuna for one,
    so that the study never has more trials than its budget. The counter is the number of
    trials claimed or present (trials added by other means count as claimed). A claim that
    a worker did not use (its loop ended first) is released; one of a worker killed between
    its claim and its trial (milliseconds) is lost: the study then stops one trial short of
    its budget, its file stays provisional, and a larger ``--trials`` finishes it."""

    def __init__(self, study, attrs: StudyAttrs) -> None:
        self.study, self.attrs, self.made = study, attrs, 0

    def _trials(self) -> int:
        return len(self.study.get_trials(deepcopy=False))

    def claim(self) -> bool:
        """One more trial, if the budget (read now: another worker may have raised it) has room."""
        budget = self.attrs.get(BUDGET_KEY)

        def take(claimed):
            taken = max(claimed or 0, self._trials())
            return taken + 1 if budget is not None and taken < budget else KEEP

        _, claimed = self.attrs.update(CLAIMED_KEY, take)
        self.made += claimed
        return claimed

    def release(self, count: int) -> None:
        if count > 0:
            self.attrs.update(CLAIMED_KEY, lambda claimed: max(0, claimed - count) if claimed else KEEP)
            self.made -= count

    def pending(self, trials: int) -> List[int]:
        """The numbers that the trials claimed by workers but not yet asked for will have."""
        return list(range(trials, max(trials, self.attrs.get(CLAIMED_KEY, 0))))

    def claim_final(self, budget: int, record: Dict[str, Any]) -> Tuple[bool, Dict[str, Any]]:
        """The right to write the final file of ``budget``: won by one worker. Returns
        whether this one won and the claim stored (the winner's record)."""
        def take(stored):
            return KEEP if stored is not None and stored.get("budget", 0) >= budget else {**record, "budget": budget}

        stored, won = self.attrs.update(FINAL_KEY, take)
        return won, stored
