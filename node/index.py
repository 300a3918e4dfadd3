"""The SQLite index: the single source of truth for instances, series, studies and jobs across restarts.

WAL mode with ``synchronous=NORMAL``: a committed row survives a process crash (kill -9); a power
cut may drop the last commits, which the spool restores at start from the fsynced files themselves
(``Spool.reindex_orphans``). That keeps one fsync per instance off the C-STORE path. One connection per process, serialised by a lock,
because association threads write concurrently and SQLite allows one writer anyway.
"""
from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

# Keyed by (study, series): one Series UID can reach two studies (a PACS re-sends a series under a
# reconciled patient's study), and each study must keep its own row and phase label.
SERIES_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    modality TEXT,
    description TEXT,
    series_number INTEGER,
    image_type TEXT,
    contrast_agent TEXT,
    contrast_route TEXT,
    contrast_start_time TEXT,
    acquisition_time TEXT,
    series_time TEXT,
    protocol_name TEXT,
    orientation TEXT,
    phase TEXT,
    phase_source TEXT,
    phase_reason TEXT,
    PRIMARY KEY (study_uid, series_uid)
);"""

# A Series UID looked up across studies (one arriving under a second study).
SERIES_INDEXES = "CREATE INDEX IF NOT EXISTS series_by_uid ON series(series_uid);"

SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    state TEXT NOT NULL,                 -- receiving | ready | done | failed
    first_received REAL NOT NULL,
    last_received REAL NOT NULL,
    last_assoc TEXT,
    last_assoc_released INTEGER NOT NULL DEFAULT 0,
    ready_at REAL,
    ready_trigger TEXT,
    revision INTEGER NOT NULL DEFAULT 0, -- bumped by each analysis; late arrivals start a new one
    completed_at REAL,
    calling_aet TEXT
);
{series_table}
{series_indexes}
CREATE TABLE IF NOT EXISTS instances (
    id INTEGER PRIMARY KEY,
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    transfer_syntax TEXT NOT NULL,
    instance_number INTEGER,
    slice_position REAL,
    received_at REAL NOT NULL,
    UNIQUE (sop_instance_uid, sha256)
);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_uid);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_uid);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    study_uid TEXT NOT NULL,
    revision INTEGER NOT NULL,
    state TEXT NOT NULL,                 -- queued | running | done | failed | superseded
    attempts INTEGER NOT NULL DEFAULT 0,
    trigger TEXT,
    reason TEXT,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    worker_pid INTEGER,
    timings TEXT,                        -- JSON {stage: seconds} of the pipeline run
    not_before REAL,                     -- a queued retry is not claimed before this time
    findings TEXT,                       -- JSON summary of the result for monitoring (no identifiers)
    UNIQUE (study_uid, revision)
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    study_uid TEXT NOT NULL,
    revision INTEGER NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    destination TEXT NOT NULL,
    state TEXT NOT NULL,                 -- pending | done | dead
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    created REAL NOT NULL,
    done_at REAL,
    UNIQUE (sop_instance_uid, destination)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(state, next_attempt_at);
CREATE TABLE IF NOT EXISTS workers (
    pid INTEGER PRIMARY KEY,
    started REAL NOT NULL,
    heartbeat REAL NOT NULL,
    models_loaded INTEGER NOT NULL DEFAULT 0,
    models TEXT,                         -- JSON [{name, version, sha256}]
    status TEXT
);
-- The last revision of each purged study, keyed by a hash of its UID (no identifier outlives the
-- purge): a study received again continues past it, so its results get new SOP Instance UIDs
-- (they derive from the revision) that a PACS keeping the first copy of a UID cannot swallow.
CREATE TABLE IF NOT EXISTS purged_revisions (
    study_hash TEXT PRIMARY KEY,
    last_revision INTEGER NOT NULL
);
-- Made once per data directory: 'uid_salt' goes into every result SOP Instance UID, so a node
-- whose data directory was rebuilt (revisions start at 1 again) cannot reissue an earlier UID for
-- different content, which a PACS keeping the first copy of a UID would silently drop.
CREATE TABLE IF NOT EXISTS node_identity (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
""".replace("{series_table}", SERIES_TABLE.format(name="series")).replace("{series_indexes}", SERIES_INDEXES)


def study_hash(study_uid: str) -> str:
    return hashlib.sha256(study_uid.encode()).hexdigest()

STUDY_STATES = ("receiving", "ready", "done", "failed")
JOB_STATES = ("queued", "running", "done", "failed", "superseded")
OUTBOX_STATES = ("pending", "done", "dead")


@dataclass(frozen=True)
class InstanceRow:
    sop_instance_uid: str
    sop_class_uid: str
    series_uid: str
    study_uid: str
    path: str
    sha256: str
    size: int
    transfer_syntax: str
    instance_number: int | None
    slice_position: float | None
    received_at: float


class Index:
    """Thread-safe access to the SQLite index of one data directory."""

    def __init__(self, db_path: Path) -> None:
        self.path = db_path
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(str(db_path), timeout=30.0, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA busy_timeout=30000")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.executescript(SCHEMA)
        self._migrate()
        if self.scalar(self._SALT_QUERY) is None:
            # A database from before the salt keeps unsalted UIDs: a job it had half delivered is then
            # finished under the UIDs already sent. OR IGNORE: the receiver and the worker open the
            # index concurrently; the first insert wins.
            legacy = self.scalar("SELECT EXISTS (SELECT 1 FROM jobs)")
            self._conn.execute("INSERT OR IGNORE INTO node_identity (key, value) VALUES ('uid_salt', ?)",
                               ("" if legacy else uuid.uuid4().hex,))

    _SALT_QUERY = "SELECT value FROM node_identity WHERE key='uid_salt'"

    def uid_salt(self) -> str:
        """This data directory's salt for result UIDs (see ``node_identity`` in the schema)."""
        return str(self.scalar(self._SALT_QUERY))

    # Columns added after the first release: (table, column, declaration). CREATE TABLE IF NOT
    # EXISTS leaves an older database's tables as they were, so add what they lack.
    _ADDED_COLUMNS = (("jobs", "timings", "TEXT"), ("workers", "models", "TEXT"), ("jobs", "not_before", "REAL"),
                      ("jobs", "findings", "TEXT"))

    def _migrate(self) -> None:
        for table, column, decl in self._ADDED_COLUMNS:
            have = {r[1] for r in self._conn.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self._conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
        self._rekey_series()

    def _series_key(self) -> list[str]:
        rows = sorted((r[5], r[1]) for r in self._conn.execute("PRAGMA table_info(series)") if r[5])
        return [name for _, name in rows]

    def _rekey_series(self) -> None:
        """Rebuild a series table keyed by Series UID alone (older data directories) by (study, series).

        Under the old key a series re-sent under a second study moved its one row there, and the
        first study lost it; that row is given back here from the instances each study holds.
        """
        if self._series_key() == ["study_uid", "series_uid"]:
            return
        with self.transaction() as c:
            if self._series_key() == ["study_uid", "series_uid"]:  # another process was first
                return
            c.execute(SERIES_TABLE.format(name="series_rekeyed"))
            columns = ", ".join(r[1] for r in c.execute("PRAGMA table_info(series_rekeyed)"))
            c.execute(f"INSERT INTO series_rekeyed ({columns}) SELECT {columns} FROM series")
            taken = ", ".join(f"s.{name}" for name in columns.split(", ")[2:])
            c.execute(f"INSERT OR IGNORE INTO series_rekeyed ({columns}) SELECT DISTINCT i.study_uid, s.series_uid,"
                      f" {taken} FROM instances i JOIN series s ON s.series_uid = i.series_uid")
            c.execute("DROP TABLE series")
            c.execute("ALTER TABLE series_rekeyed RENAME TO series")
            c.execute(SERIES_INDEXES)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT under the process lock; rolls back on any exception."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def scalar(self, sql: str, params: tuple | dict = ()) -> object:
        rows = self.query(sql, params)
        return rows[0][0] if rows else None

    def integrity_ok(self) -> bool:
        return self.scalar("PRAGMA integrity_check") == "ok"

    # --- instances -------------------------------------------------------------------------
    def find_instance(self, sop_instance_uid: str, sha256: str) -> sqlite3.Row | None:
        rows = self.query(
            "SELECT * FROM instances WHERE sop_instance_uid=? AND sha256=?", (sop_instance_uid, sha256)
        )
        return rows[0] if rows else None

    def count_versions(self, sop_instance_uid: str) -> int:
        return int(self.scalar("SELECT COUNT(*) FROM instances WHERE sop_instance_uid=?", (sop_instance_uid,)))

    def counts_by_state(self, table: str) -> dict[str, int]:
        states = {"studies": STUDY_STATES, "jobs": JOB_STATES, "outbox": OUTBOX_STATES}[table]
        counts = {s: 0 for s in states}
        for row in self.query(f"SELECT state, COUNT(*) FROM {table} GROUP BY state"):
            counts[row[0]] = row[1]
        return counts


def now() -> float:
    return time.time()
