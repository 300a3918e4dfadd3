"""Retention: received data is PHI and is deleted once its study has been dealt with.

A study completed (results produced) more than ``completed_days`` ago, or failed more than
``failed_days`` ago, loses its received instances, its results and every index row about it, in
that order: files first, then rows in one transaction, so a crash in between leaves rows whose
files are gone (re-deleted next run), never files the index does not know. Studies whose results
are still waiting in the outbox are kept until the outbox is done with them. Each run also removes
partial receptions an aborted or stalled association left in ``spool/incoming``.
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from typing import Callable

from .index import Index, study_hash
from .logs import kv
from .spool import Spool

log = logging.getLogger(__name__)
DAY_S = 86400.0


@dataclass(frozen=True)
class RetentionPolicy:
    completed_days: float = 7.0
    failed_days: float = 30.0


@dataclass(frozen=True)
class Purged:
    studies: int
    instances: int
    bytes: int
    result_files: int


def stale_reception_s(settings) -> float:
    """How long a partial reception in ``spool/incoming`` may sit untouched before it is taken for an
    aborted association's: well past every timeout that ends a stalled one, and never under 10 min."""
    n = settings.node
    return max(600.0, 2.0 * max(n.acse_timeout, n.dimse_timeout, n.network_timeout, n.socket_timeout))


class RetentionJob:
    def __init__(self, index: Index, spool: Spool, policy: RetentionPolicy,
                 on_removed: Callable[[str, int], None] = lambda kind, n: None,
                 clock: Callable[[], float] = time.time, stale_incoming_s: float | None = None) -> None:
        self.index = index
        self.spool = spool
        self.policy = policy
        self.on_removed = on_removed
        self.clock = clock
        # partial receptions untouched this long are an aborted association's (None: only at start)
        self.stale_incoming_s = stale_incoming_s

    _DUE = ("SELECT study_uid FROM studies s WHERE ((state='done' AND completed_at < ?) OR"
            " (state='failed' AND completed_at < ?)) AND NOT EXISTS"
            " (SELECT 1 FROM outbox o WHERE o.study_uid=s.study_uid AND o.state='pending')")

    def _cutoffs(self) -> tuple[float, float]:
        now = self.clock()
        return now - self.policy.completed_days * DAY_S, now - self.policy.failed_days * DAY_S

    def due_studies(self) -> list[str]:
        return [r[0] for r in self.index.query(self._DUE, self._cutoffs())]

    def run_once(self) -> Purged:
        studies = instances = size = results = 0
        if self.stale_incoming_s is not None:
            swept = self.spool.sweep_incoming(older_than_s=self.stale_incoming_s)
            if swept:
                log.warning("%s", kv(event="stale_partial_receptions_removed", files=swept))
                self.on_removed("partial_receptions", swept)
        for uid in self.due_studies():
            # Under the study's lock, so no instance is stored into it meanwhile; and only if still due:
            # a late instance stored since the query set the study receiving again.
            with self.spool.study_lock(uid):
                if not self.index.query(self._DUE + " AND study_uid=?", (*self._cutoffs(), uid)):
                    log.info("%s", kv(event="study_purge_skipped", study_uid=uid, reason="no longer due"))
                    continue
                n, b, removed = self._purge(uid)
            studies, instances, size, results = studies + 1, instances + n, size + b, results + removed
            log.info("%s", kv(event="study_purged", study_uid=uid, instances=n, bytes=b))
        for kind, count in (("studies", studies), ("instances", instances), ("bytes", size), ("result_files", results)):
            if count:
                self.on_removed(kind, count)
        return Purged(studies, instances, size, results)

    def _purge(self, uid: str) -> tuple[int, int, int]:
        """Files first, then rows: (instances, bytes, result files) removed."""
        results = 0
        folder = self.spool.study_dir(uid)
        result_dir = self.spool.root.parent / "results" / folder.name
        n, b = self.index.query("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM instances WHERE study_uid=?",
                                (uid,))[0]
        if result_dir.exists():
            results += sum(1 for p in result_dir.rglob("*") if p.is_file())
            shutil.rmtree(result_dir)
        if folder.exists():
            shutil.rmtree(folder)
        with self.index.transaction() as c:
            c.execute("INSERT INTO purged_revisions (study_hash, last_revision) SELECT ?, revision FROM studies"
                      " WHERE study_uid=? ON CONFLICT(study_hash) DO UPDATE SET last_revision=MAX(last_revision,"
                      " excluded.last_revision)", (study_hash(uid), uid))
            for table in ("instances", "series", "jobs", "outbox", "studies"):
                c.execute(f"DELETE FROM {table} WHERE study_uid=?", (uid,))
        return n, b, results
