"""Study assembly: label phases, decide readiness, and turn a ready study into a durable job.

The decision itself is pure (``node.readiness``); this module feeds it snapshots from the index and
keeps one apscheduler timer per study with the stable id ``study:<uid>``. Timers are not persisted:
after a restart they are re-derived from the index (``recover``), which holds every fact they need.
A timer is armed at the first instance and, when it fires early because more instances came,
re-armed to ``last_received + quiet_period``: the same effect as re-arming on every instance
without rescheduling a job per received instance.
"""
from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone
from typing import Callable

from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.base import BaseScheduler

from pipeline.phases import Phase, PhaseRules, SeriesHeader, label_series

from .index import Index
from .jobs import JobQueue
from .logs import kv
from .readiness import ReadinessPolicy, SeriesSnapshot, StudySnapshot, evaluate

log = logging.getLogger(__name__)


def _tuple(text: str | None) -> tuple[str, ...]:
    return tuple(text.split("\\")) if text else ()


def _floats(text: str | None) -> tuple[float, ...] | None:
    try:
        return tuple(float(v) for v in text.split("\\")) if text else None
    except ValueError:
        return None


class StudyAssembler:
    def __init__(
        self,
        index: Index,
        queue: JobQueue,
        scheduler: BaseScheduler,
        policy: ReadinessPolicy,
        rules: PhaseRules,
        on_ready: Callable[[str, float], None] = lambda uid, waited: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.index = index
        self.queue = queue
        self.scheduler = scheduler
        self.policy = policy
        self.rules = rules
        self.on_ready = on_ready
        self.clock = clock
        self._lock = threading.Lock()

    @staticmethod
    def job_id(study_uid: str) -> str:
        return f"study:{study_uid}"

    # --- events ---------------------------------------------------------------------------------
    def instance_stored(self, study_uid: str) -> None:
        if self.scheduler.get_job(self.job_id(study_uid)) is None:
            self._arm(study_uid, self.clock() + self.policy.quiet_period_s)

    def association_released(self, assoc_id: str, study_uids: set[str]) -> None:
        with self.index.transaction() as c:
            c.executemany(
                "UPDATE studies SET last_assoc_released=1 WHERE study_uid=? AND last_assoc=?",
                [(uid, assoc_id) for uid in study_uids],
            )
        for uid in study_uids:
            self._arm(uid, self.clock())  # the "complete" rule may now hold

    def recover(self) -> int:
        """Re-arm a timer for every study still receiving (after a restart or crash)."""
        uids = [r[0] for r in self.index.query("SELECT study_uid FROM studies WHERE state='receiving'")]
        for uid in uids:
            self._arm(uid, self.clock())
        return len(uids)

    def _arm(self, study_uid: str, when: float) -> None:
        self.scheduler.add_job(
            self.check,
            "date",
            run_date=datetime.fromtimestamp(when, tz=timezone.utc),
            args=[study_uid],
            id=self.job_id(study_uid),
            replace_existing=True,
            misfire_grace_time=None,
            coalesce=True,
            # A re-arm for "now" while check() still runs (an association released meanwhile) would
            # otherwise be dropped as over max_instances, leaving the study with no timer. check() is
            # serialised by its lock and safe to run twice.
            max_instances=16,
        )

    # --- decision -------------------------------------------------------------------------------
    def snapshot(self, study_uid: str) -> StudySnapshot | None:
        rows = self.index.query("SELECT * FROM studies WHERE study_uid=?", (study_uid,))
        if not rows:
            return None
        study = rows[0]
        labels = self.label_phases(study_uid)
        series = []
        for s in self.index.query("SELECT series_uid FROM series WHERE study_uid=?", (study_uid,)):
            inst = self.index.query(
                "SELECT instance_number, slice_position FROM instances WHERE series_uid=? AND study_uid=? ORDER BY id",
                (s[0], study_uid)
            )
            series.append(
                SeriesSnapshot(
                    series_instance_uid=s[0],
                    phase=labels[s[0]].phase if s[0] in labels else Phase.OTHER,
                    instance_numbers=tuple(r[0] for r in inst),
                    slice_positions=tuple(r[1] for r in inst),
                )
            )
        return StudySnapshot(
            study_instance_uid=study_uid,
            first_received=study["first_received"],
            last_received=study["last_received"],
            last_association_released=bool(study["last_assoc_released"]),
            series=tuple(series),
        )

    def label_phases(self, study_uid: str) -> dict:
        rows = self.index.query(
            "SELECT s.*, (SELECT COUNT(*) FROM instances i WHERE i.series_uid=s.series_uid AND i.study_uid=s.study_uid)"
            " AS n"
            " FROM series s WHERE s.study_uid=?",
            (study_uid,),
        )
        headers = [
            SeriesHeader(
                series_instance_uid=r["series_uid"],
                modality=r["modality"] or "",
                series_description=r["description"],
                series_number=r["series_number"],
                image_type=_tuple(r["image_type"]),
                contrast_agent=r["contrast_agent"],
                contrast_route=r["contrast_route"],
                contrast_start_time=r["contrast_start_time"],
                acquisition_time=r["acquisition_time"],
                series_time=r["series_time"],
                protocol_name=r["protocol_name"],
                image_orientation=_floats(r["orientation"]),
                num_instances=r["n"],
            )
            for r in rows
        ]
        labels = label_series(headers, self.rules)
        with self.index.transaction() as c:
            c.executemany(
                "UPDATE series SET phase=?, phase_source=?, phase_reason=? WHERE study_uid=? AND series_uid=?",
                [(lab.phase.value, lab.source, lab.reason, study_uid, uid) for uid, lab in labels.items()],
            )
        return labels

    def check(self, study_uid: str) -> None:
        """Timer callback: enqueue the study if ready, otherwise re-arm for the next check."""
        with self._lock:
            snap = self.snapshot(study_uid)
            if snap is None:
                return
            state = self.index.scalar("SELECT state FROM studies WHERE study_uid=?", (study_uid,))
            if state != "receiving":
                return
            now = self.clock()
            decision = evaluate(snap, now, self.policy)
            if not decision.ready:
                if decision.next_check_at is not None:
                    self._arm(study_uid, max(decision.next_check_at, now + 0.05))
                return
            job_id = self.queue.enqueue_ready_study(study_uid, decision.trigger or "unknown", now)
            if job_id is None:
                return  # state changed under us (another instance arrived); its timer decides
        waited = now - snap.first_received
        log.info("%s", kv(event="study_ready", study_uid=study_uid, trigger=decision.trigger,
                          series=len(snap.series), job=job_id, waited_s=f"{waited:.1f}"))
        self.on_ready(study_uid, waited)

    def cancel(self, study_uid: str) -> None:
        try:
            self.scheduler.remove_job(self.job_id(study_uid))
        except JobLookupError:
            pass
