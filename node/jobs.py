"""The durable job queue, in the index's SQLite database.

A job is one analysis of one revision of a study. States: queued -> running -> done | failed; a job
still queued when a newer revision of its study is queued is superseded (its analysis would be out of
date, and its report would reach the PACS after the newer one's).
A job found ``running`` when a worker starts was interrupted by a crash: it is queued again until
it has used ``max_attempts``, then failed with that reason, so a poison study cannot loop forever.
A transient failure (a full disk, memory, a GPU out of memory) is queued again the same way, but not
claimed before its ``not_before`` time, so the condition has a chance to clear.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from .index import Index, study_hash
from .logs import kv

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    id: int
    study_uid: str
    revision: int
    attempts: int
    trigger: str | None


class JobQueue:
    def __init__(self, index: Index, max_attempts: int = 3) -> None:
        self.index = index
        self.max_attempts = max_attempts

    def enqueue_ready_study(self, study_uid: str, trigger: str, now: float) -> int | None:
        """Mark a receiving study ready and queue its next revision; None if it is no longer receiving."""
        with self.index.transaction() as c:
            row = c.execute("SELECT state, revision FROM studies WHERE study_uid=?", (study_uid,)).fetchone()
            if row is None or row["state"] != "receiving":
                return None
            purged = c.execute("SELECT last_revision FROM purged_revisions WHERE study_hash=?",
                               (study_hash(study_uid),)).fetchone()
            revision = max(row["revision"], purged[0] if purged else 0) + 1
            c.execute(
                "UPDATE studies SET state='ready', revision=?, ready_at=?, ready_trigger=? WHERE study_uid=?",
                (revision, now, trigger, study_uid),
            )
            c.execute("UPDATE jobs SET state='superseded', reason=?, finished=? WHERE study_uid=? AND state='queued'",
                      (f"superseded by revision {revision}", now, study_uid))
            cur = c.execute(
                "INSERT INTO jobs (study_uid, revision, state, trigger, created) VALUES (?, ?, 'queued', ?, ?)",
                (study_uid, revision, trigger, now),
            )
            return int(cur.lastrowid)

    def claim(self, worker_pid: int, now: float) -> Job | None:
        with self.index.transaction() as c:
            row = c.execute("SELECT * FROM jobs WHERE state='queued' AND (not_before IS NULL OR not_before <= ?)"
                            " ORDER BY id LIMIT 1", (now,)).fetchone()
            if row is None:
                return None
            c.execute(
                "UPDATE jobs SET state='running', attempts=attempts+1, started=?, worker_pid=? WHERE id=?",
                (now, worker_pid, row["id"]),
            )
            return Job(row["id"], row["study_uid"], row["revision"], row["attempts"] + 1, row["trigger"])

    def finish(self, job: Job, ok: bool, reason: str | None, now: float, timings: dict | None = None,
               worker_pid: int | None = None, findings: dict | None = None) -> bool:
        """Record the outcome; with ``worker_pid``, only while that worker still owns the job (False if not:
        it was requeued meanwhile, and whoever runs it now records it)."""
        state = "done" if ok else "failed"
        with self.index.transaction() as c:
            owner = "" if worker_pid is None else " AND state='running' AND worker_pid=?"
            cur = c.execute(f"UPDATE jobs SET state=?, reason=?, finished=?, timings=?, findings=? WHERE id=?{owner}",
                            (state, reason, now, json.dumps(timings) if timings else None,
                             json.dumps(findings) if findings else None, job.id,
                             *(() if worker_pid is None else (worker_pid,))))
            if cur.rowcount == 0:
                log.warning("%s", kv(event="job_outcome_dropped", job=job.id, reason="no longer owned"))
                return False
            # Only the latest revision moves the study; a late arrival has already reopened it.
            c.execute(
                "UPDATE studies SET state=?, completed_at=? WHERE study_uid=? AND revision=? AND state='ready'",
                (state, now, job.study_uid, job.revision),
            )
        return True

    def retry_later(self, job: Job, reason: str, not_before: float, worker_pid: int) -> bool:
        """Queue a job that failed for a transient reason again, not to be claimed before ``not_before``;
        False (and nothing changed) once it has used ``max_attempts`` or is no longer this worker's."""
        if job.attempts >= self.max_attempts:
            return False
        with self.index.transaction() as c:
            cur = c.execute("UPDATE jobs SET state='queued', reason=?, not_before=?, worker_pid=NULL"
                            " WHERE id=? AND state='running' AND worker_pid=?", (reason, not_before, job.id, worker_pid))
            return cur.rowcount == 1

    def park(self, job: Job) -> None:
        """Give a running job back to the queue (shutdown); the attempt is not counted."""
        with self.index.transaction() as c:
            c.execute("UPDATE jobs SET state='queued', attempts=attempts-1, worker_pid=NULL WHERE id=? AND state='running'",
                      (job.id,))

    def recover_interrupted(self, now: float, stale_s: float | None = None, idle_pid: int | None = None
                            ) -> tuple[int, int]:
        """Requeue jobs a crashed worker left running; fail those out of attempts. Returns (requeued, failed).

        With ``stale_s``, a job whose worker wrote a heartbeat within ``stale_s`` is left alone: that worker
        is alive (an orphan of a killed receiver finishing its study), and running it twice would
        double the work and let the slower one's outcome win. ``idle_pid``, the idle worker calling, holds
        no job: one running in its name is a dead predecessor's whose PID it reuses."""
        requeued = failed = 0
        alive = "" if stale_s is None else (
            " AND (worker_pid IS ? OR worker_pid NOT IN (SELECT pid FROM workers WHERE heartbeat >= ?))")
        with self.index.transaction() as c:
            for row in c.execute("SELECT * FROM jobs WHERE state='running'" + alive,
                                 () if stale_s is None else (idle_pid, now - stale_s)).fetchall():
                if row["attempts"] >= self.max_attempts:
                    reason = f"worker stopped during analysis {row['attempts']} times"
                    c.execute("UPDATE jobs SET state='failed', reason=?, finished=? WHERE id=?", (reason, now, row["id"]))
                    c.execute("UPDATE studies SET state='failed', completed_at=? WHERE study_uid=? AND revision=? AND state='ready'",
                              (now, row["study_uid"], row["revision"]))
                    failed += 1
                else:
                    c.execute("UPDATE jobs SET state='queued', worker_pid=NULL WHERE id=?", (row["id"],))
                    requeued += 1
        if requeued or failed:
            log.warning("%s", kv(event="jobs_recovered", requeued=requeued, failed=failed))
        return requeued, failed
