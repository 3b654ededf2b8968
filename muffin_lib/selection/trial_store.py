"""The trial store: one SQLite row per finished (configuration, fold, scope), written as each trial ends.

Each row is inserted in its own transaction, so a crash or ``kill -9`` leaves either the whole row or
nothing. ``UNIQUE(config_key, fold, scope)`` means a re-run can never duplicate a trial; callers skip
what :meth:`TrialStore.completed` already holds. The ``config_key`` of a row is :func:`trial_key`: a hash
of the training configuration (``TrainConfig.key()``), the dataset fingerprint, the fold plan, the
execution (resolved device type and precision, ``runtime.execution_key``, e.g. ``cuda/bf16``), the model
and training code version ``recipe.CODE_VERSION`` and the preprocessing version
``imageio.PREPROCESS_VERSION``. So a changed setting, dataset, split, device type, precision, architecture
or preprocessing never matches an old row. The execution string is also kept in each row's metrics
(``metrics["execution"]``, returned as ``record["execution"]``).

Scopes: ``cv`` (plain cross-validation / grid search), ``nested-inner`` and ``nested-outer`` (nested CV;
the inner folds of each outer fold form their own fold plan, hence their own keys), ``test`` (refit on
the whole training split, scored once on the test split).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import sqlite3
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from muffin_lib.errors import MuffinError
from muffin_lib.files import jsonable

# Connection-level wait for a lock held by another writer (Ray driver, a second `cv` process).
LOCK_TIMEOUT_SECONDS = 60.0

_COLUMNS = (
    "config_key",
    "fold",
    "scope",
    "config_json",
    "seed",
    "metrics_json",
    "zero_one_loss",
    "n_train",
    "n_test",
    "seconds",
    "device",
    "created_at",
    "host",
    "fingerprint",
    "plan_key",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS trials (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    config_key TEXT NOT NULL,
    fold INTEGER NOT NULL,
    scope TEXT NOT NULL,
    config_json TEXT NOT NULL,
    seed INTEGER,
    metrics_json TEXT NOT NULL,
    zero_one_loss REAL,
    n_train INTEGER,
    n_test INTEGER,
    seconds REAL,
    device TEXT,
    created_at TEXT NOT NULL,
    host TEXT,
    fingerprint TEXT,
    plan_key TEXT,
    UNIQUE (config_key, fold, scope)
)
"""


def fold_plan_key(folds: Sequence[tuple[Sequence[int], Sequence[int]]]) -> str:
    """Hash of the fold plan itself (every train and held-out index), so any change of K, seed or data shows."""
    digest = hashlib.sha256()
    digest.update(f"folds={len(folds)};".encode())
    for train_idx, test_idx in folds:
        for indices in (train_idx, test_idx):
            array = np.asarray(indices, dtype=np.int64)
            digest.update(f"{array.size};".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def trial_key(config_key: str, fingerprint: str | None, plan_key: str, *, execution: str) -> str:
    """Store key of one configuration on one dataset and fold plan, run as ``execution`` (e.g. ``cpu/fp32``,
    from ``runtime.execution_key``) by this code and preprocessing version (see the module docstring)."""
    from muffin_lib.data import imageio
    from muffin_lib.training import recipe

    payload = json.dumps(
        {
            "config": config_key,
            "fingerprint": fingerprint,
            "plan": plan_key,
            "execution": execution,
            "code_version": recipe.CODE_VERSION,
            "preprocess_version": imageio.PREPROCESS_VERSION,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class TrialStore:
    """SQLite store of finished trials at ``path`` (usually ``WorkDir(work_dir).trials_db``)."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser().resolve()
        if self.path.is_dir():
            raise MuffinError(f"trial store {self.path} is a directory; pass the path of a .sqlite file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as connection:
            # WAL lets readers (a notebook looking at results) work while a run writes.
            connection.execute("PRAGMA journal_mode=WAL")
            with connection:
                connection.execute(_SCHEMA)
            present = {row[1] for row in connection.execute("PRAGMA table_info(trials)")}
        missing = [name for name in _COLUMNS if name not in present]
        if missing:
            raise MuffinError(
                f"trial store {self.path} has a 'trials' table without the columns {missing}: it was made by "
                f"another program or version. Move it away (e.g. mv '{self.path}' '{self.path}.old') and run again."
            )

    def __repr__(self) -> str:
        return f"TrialStore({str(self.path)!r})"

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A short-lived connection: nothing to pickle for workers, no handle left open after a crash."""
        connection = None
        try:
            connection = sqlite3.connect(self.path, timeout=LOCK_TIMEOUT_SECONDS)
            connection.row_factory = sqlite3.Row
            yield connection
        except sqlite3.DatabaseError as error:
            if isinstance(error, sqlite3.OperationalError) and "locked" in str(error):
                raise MuffinError(
                    f"trial store {self.path} stayed locked for {LOCK_TIMEOUT_SECONDS:.0f} s by another "
                    "process; wait for it to finish (or stop it) and run again"
                ) from error
            raise MuffinError(
                f"trial store {self.path} is not a readable SQLite trial store ({error}). Move it away "
                f"(e.g. mv '{self.path}' '{self.path}.bad') and run again; its trials will be re-run."
            ) from error
        finally:
            if connection is not None:
                connection.close()

    def add(
        self,
        *,
        config_key: str,
        fold: int,
        scope: str,
        config: dict,
        metrics: dict,
        seed: int | None = None,
        n_train: int | None = None,
        n_test: int | None = None,
        seconds: float | None = None,
        device: str | None = None,
        fingerprint: str | None = None,
        plan_key: str | None = None,
    ) -> bool:
        """Insert one finished trial atomically; False (and no change) when it is already stored."""
        zero_one = metrics.get("zero_one_loss")
        row = (
            config_key,
            int(fold),
            scope,
            json.dumps(jsonable(config), sort_keys=True),
            None if seed is None else int(seed),
            json.dumps(jsonable(metrics), sort_keys=True),
            None if zero_one is None else float(zero_one),
            None if n_train is None else int(n_train),
            None if n_test is None else int(n_test),
            None if seconds is None else float(seconds),
            device,
            _utc_now(),
            socket.gethostname(),
            fingerprint,
            plan_key,
        )
        placeholders = ", ".join("?" for _ in _COLUMNS)
        sql = f"INSERT OR IGNORE INTO trials ({', '.join(_COLUMNS)}) VALUES ({placeholders})"
        with self._connect() as connection, connection:
            cursor = connection.execute(sql, row)
            return cursor.rowcount == 1

    def add_record(self, record: dict) -> bool:
        """:meth:`add` from a dict as returned by :meth:`records` (extra keys are ignored)."""
        fields = ("config_key", "fold", "scope", "config", "metrics", "seed", "n_train", "n_test", "seconds")
        fields += ("device", "fingerprint", "plan_key")
        return self.add(**{name: record.get(name) for name in fields})

    def get(self, config_key: str, fold: int, scope: str = "cv") -> dict | None:
        rows = self._select("config_key = ? AND fold = ? AND scope = ?", (config_key, int(fold), scope))
        return rows[0] if rows else None

    def completed(self, scope: str | None = None, config_key: str | None = None) -> set[tuple[str, int, str]]:
        """``{(config_key, fold, scope)}`` of every stored trial, optionally of one scope / configuration."""
        where, params = self._filter(scope, config_key)
        with self._connect() as connection:
            rows = connection.execute(f"SELECT config_key, fold, scope FROM trials WHERE {where}", params)
            return {(row[0], int(row[1]), row[2]) for row in rows}

    def records(self, scope: str | None = None, config_key: str | None = None) -> list[dict]:
        """Stored trials in insertion order as dicts, ``config`` and ``metrics`` decoded from JSON."""
        where, params = self._filter(scope, config_key)
        return self._select(where, params)

    def to_frame(self, scope: str | None = None, config_key: str | None = None):
        """:meth:`records` as a pandas DataFrame (one row per trial)."""
        import pandas as pd

        columns = ["id", *_COLUMNS[:3], "config", "metrics", *_COLUMNS[4:5], *_COLUMNS[6:]]
        return pd.DataFrame(self.records(scope, config_key), columns=columns)

    def __len__(self) -> int:
        with self._connect() as connection:
            return int(connection.execute("SELECT COUNT(*) FROM trials").fetchone()[0])

    @staticmethod
    def _filter(scope: str | None, config_key: str | None) -> tuple[str, tuple]:
        clauses, params = ["1 = 1"], []
        if scope is not None:
            clauses.append("scope = ?")
            params.append(scope)
        if config_key is not None:
            clauses.append("config_key = ?")
            params.append(config_key)
        return " AND ".join(clauses), tuple(params)

    def _select(self, where: str, params: tuple) -> list[dict]:
        with self._connect() as connection:
            rows = connection.execute(f"SELECT * FROM trials WHERE {where} ORDER BY id", params).fetchall()
        records = []
        for row in rows:
            record = dict(row)
            record["config"] = json.loads(record.pop("config_json"))
            record["metrics"] = json.loads(record.pop("metrics_json"))
            record["execution"] = record["metrics"].get("execution") if isinstance(record["metrics"], dict) else None
            records.append(record)
        return records

