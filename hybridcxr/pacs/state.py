"""What ``hybridcxr pacs`` remembers between runs: the studies each model version answered, in SQLite.

Why SQLite: one file, transactions (a study is marked done only once all its objects are stored, and a crash
leaves no half-written state), safe under a second process polling the same PACS. Keyed by server, study UID
and model version: a new model version answers every study again. No patient data is kept, only UIDs.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path

from hybridcxr.errors import OutputError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answered (
    server TEXT NOT NULL, study_uid TEXT NOT NULL, model TEXT NOT NULL,
    how TEXT NOT NULL, stored INTEGER NOT NULL, at TEXT NOT NULL,
    PRIMARY KEY (server, study_uid, model)
);
CREATE TABLE IF NOT EXISTS runs (
    server TEXT NOT NULL, model TEXT NOT NULL, started TEXT NOT NULL,
    PRIMARY KEY (server, model)
);
"""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class PacsState:
    """The local record of answered studies and of the last run, per server and model version."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with closing(self._connect()) as db, db:
                db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as err:
            raise OutputError(self.path, f"not usable as the PACS state database ({err})") from None

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def _run(self, sql: str, args: tuple) -> list[tuple]:
        try:
            with closing(self._connect()) as db, db:
                return db.execute(sql, args).fetchall()
        except sqlite3.Error as err:
            raise OutputError(self.path, f"PACS state database error ({err})") from None

    def is_done(self, server: str, study_uid: str, model: str) -> bool:
        """Whether this model version already answered the study on this server."""
        return bool(self._run("SELECT 1 FROM answered WHERE server=? AND study_uid=? AND model=?",
                              (server, study_uid, model)))

    def mark_done(self, server: str, study_uid: str, model: str, how: str, stored: int) -> None:
        """Record the study as answered (``how``: "stored" or "found in the study"), with the objects stored."""
        self._run("INSERT OR REPLACE INTO answered VALUES (?, ?, ?, ?, ?, ?)",
                  (server, study_uid, model, how, stored, _now()))

    def done(self, server: str, model: str) -> list[str]:
        """The study UIDs this model version answered on this server."""
        rows = self._run("SELECT study_uid FROM answered WHERE server=? AND model=? ORDER BY at", (server, model))
        return [r[0] for r in rows]

    def last_run(self, server: str, model: str) -> datetime | None:
        """When the last run against this server with this model version started (UTC), or None."""
        rows = self._run("SELECT started FROM runs WHERE server=? AND model=?", (server, model))
        return datetime.fromisoformat(rows[0][0]) if rows else None

    def record_run(self, server: str, model: str, started: datetime) -> None:
        """Remember a run's start, so that the next run can look only at studies since then."""
        self._run("INSERT OR REPLACE INTO runs VALUES (?, ?, ?)",
                  (server, model, started.isoformat(timespec="seconds")))
