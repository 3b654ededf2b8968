"""The trial store: one SQLite row per finished (configuration, fold, scope), each inserted in its own
transaction, so a crash leaves whole rows only and ``UNIQUE(config_key, fold, scope)`` never duplicates one.

A row's ``config_key`` is :func:`trial_key`, a hash of everything that changes a trial's result (config,
dataset, fold plan, device type and precision, code and preprocessing versions), so a change never matches
an old row. Scopes: ``cv`` (CV and grid search), ``nested-inner`` and ``nested-outer`` (nested CV), ``test``.
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

_COLUMNS = ("config_key", "fold", "scope", "config_json", "seed", "metrics_json", "zero_one_loss", "n_train",
            "n_test", "seconds", "device", "created_at", "host", "fingerprint", "plan_key")

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
    """Hash of the fold plan itself (every train and held-out index): any change of K, seed or data shows."""
    digest = hashlib.sha256()
    digest.update(f"folds={len(folds)};".encode())
    for train_idx, test_idx in folds:
        for indices in (train_idx, test_idx):
            array = np.asarray(indices, dtype=np.int64)
            digest.update(f"{array.size};".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def trial_key(config_key: str, fingerprint: str | None, plan_key: str, *, execution: str) -> str:
    """Store key of one configuration on one dataset and fold plan, run as ``execution`` (``cpu/fp32``)."""
    from muffin_lib.data import imageio
    from muffin_lib.training import recipe

    payload = json.dumps({"config": config_key, "fingerprint": fingerprint, "plan": plan_key,
                          "execution": execution, "code_version": recipe.CODE_VERSION,
                          "preprocess_version": imageio.PREPROCESS_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def _optional(value, kind):
    return None if value is None else kind(value)


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
            raise MuffinError(f"trial store {self.path} has a 'trials' table without the columns {missing}: "
                              "it was made by another program or version. Move it away (e.g. mv "
                              f"'{self.path}' '{self.path}.old') and run again.")

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

    def add_record(self, record: dict) -> bool:
        """Insert one finished trial (a dict as :meth:`records` returns; extra keys are ignored) atomically;
        False (and no change) when it is already stored."""
        get, metrics = record.get, record.get("metrics")
        row = (get("config_key"), int(get("fold")), get("scope"),
               json.dumps(jsonable(get("config")), sort_keys=True), _optional(get("seed"), int),
               json.dumps(jsonable(metrics), sort_keys=True), _optional(metrics.get("zero_one_loss"), float),
               _optional(get("n_train"), int), _optional(get("n_test"), int),
               _optional(get("seconds"), float), get("device"),
               datetime.now(timezone.utc).isoformat(timespec="seconds"), socket.gethostname(),
               get("fingerprint"), get("plan_key"))
        sql = f"INSERT OR IGNORE INTO trials ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(row))})"
        with self._connect() as connection, connection:
            return connection.execute(sql, row).rowcount == 1

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
        return self._select(*self._filter(scope, config_key))

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
        given = [(column, value) for column, value in (("scope", scope), ("config_key", config_key))
                 if value is not None]
        where = " AND ".join(["1 = 1", *(f"{column} = ?" for column, _ in given)])
        return where, tuple(value for _, value in given)

    def _select(self, where: str, params: tuple) -> list[dict]:
        with self._connect() as connection:
            rows = connection.execute(f"SELECT * FROM trials WHERE {where} ORDER BY id", params).fetchall()
        records = []
        for row in rows:
            record = dict(row)
            record["config"] = json.loads(record.pop("config_json"))
            metrics = record["metrics"] = json.loads(record.pop("metrics_json"))
            record["execution"] = metrics.get("execution") if isinstance(metrics, dict) else None
            records.append(record)
        return records
