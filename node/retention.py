"""Retention: received data is PHI and is deleted once its study has been dealt with.

A study completed (results produced) more than ``completed_days`` ago, or failed more than
``failed_days`` ago, loses its received instances, its results and every index row about it, in
that order: files first, then rows in one transaction, so a crash in between leaves rows whose
files are gone (re-deleted next run), never files the index does not know. Studies whose results
are still waiting in the outbox are kept until the outbox is done with them.
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from typing import Callable

from .index import Index
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


class RetentionJob:
    def __init__(self, index: Index, spool: Spool, policy: RetentionPolicy,
                 on_removed: Callable[[str, int], None] = lambda kind, n: None,
                 clock: Callable[[], float] = time.time) -> None:
        self.index = index
        self.spool = spool
        self.policy = policy
        self.on_removed = on_removed
        self.clock = clock

    def due_studies(self) -> list[str]:
        now = self.clock()
        rows = self.index.query(
            "SELECT study_uid FROM studies s WHERE ((state='done' AND completed_at < ?) OR"
            " (state='failed' AND completed_at < ?)) AND NOT EXISTS"
            " (SELECT 1 FROM outbox o WHERE o.study_uid=s.study_uid AND o.state='pending')",
            (now - self.policy.completed_days * DAY_S, now - self.policy.failed_days * DAY_S),
        )
        return [r[0] for r in rows]

    def run_once(self) -> Purged:
        studies = instances = size = results = 0
        for uid in self.due_studies():
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
                for table in ("instances", "series", "jobs", "outbox", "studies"):
                    c.execute(f"DELETE FROM {table} WHERE study_uid=?", (uid,))
            studies, instances, size = studies + 1, instances + n, size + b
            log.info("%s", kv(event="study_purged", study_uid=uid, instances=n, bytes=b))
        for kind, count in (("studies", studies), ("instances", instances), ("bytes", size), ("result_files", results)):
            if count:
                self.on_removed(kind, count)
        return Purged(studies, instances, size, results)
