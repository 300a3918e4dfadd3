"""The durable outbox: result objects written and indexed before any send, delivered by C-STORE.

An entry (one SOP instance for one destination) is ``done`` only when the peer answered success;
a restart never resends a done entry. A crash between the peer's success and our commit resends
that instance once, with the same SOP Instance UID (result UIDs are deterministic), which a PACS
stores as the same object: at most one copy per SOP Instance UID at the destination.

Failures are classified: permanent (association rejected permanently, 0x0122 SOP class not
supported, 0xA9xx data set does not match SOP class, 0xC0xx cannot understand) go to ``dead`` at
once; transient ones (rejected transient, timeouts, aborts, refused connections, 0xA7xx out of
resources) are retried with exponential backoff and jitter up to ``max_attempts``, then ``dead``.
"""
from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.presentation import build_context

from .config import ConfigError, Destination
from .index import Index
from .logs import kv, safe_reason

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    base_delay_s: float = 5.0
    max_delay_s: float = 900.0

    def delay(self, attempts: int, rng: random.Random) -> float:
        """Exponential backoff with +-50% jitter, so many entries do not retry in lockstep."""
        return min(self.max_delay_s, self.base_delay_s * 2 ** max(attempts - 1, 0)) * rng.uniform(0.5, 1.5)


@dataclass(frozen=True)
class SendOutcome:
    ok: bool
    permanent: bool
    reason: str


def classify_status(status: int | None) -> SendOutcome:
    if status is None:
        return SendOutcome(False, False, "no response (timeout or abort)")
    if status == 0x0000 or (status & 0xF000) == 0xB000:
        return SendOutcome(True, False, "success" if status == 0 else f"warning 0x{status:04X}")
    if status == 0x0111:  # "duplicate SOP instance": it holds this UID already, and ours are deterministic
        return SendOutcome(True, False, "already stored (0x0111)")
    permanent = status == 0x0122 or (status & 0xFF00) == 0xA900 or (status & 0xF000) == 0xC000
    return SendOutcome(False, permanent, f"status 0x{status:04X}")


def enqueue(index: Index, study_uid: str, revision: int, files: list[Path], destinations: list[Destination],
            now: float) -> int:
    """Index result files for delivery (idempotent per SOP instance and destination)."""
    added = 0
    with index.transaction() as c:
        for path in files:
            meta = pydicom.dcmread(path, stop_before_pixels=True)
            for dest in destinations:
                cur = c.execute(
                    "INSERT OR IGNORE INTO outbox (study_uid, revision, sop_instance_uid, sop_class_uid, path,"
                    " destination, state, next_attempt_at, created) VALUES (?,?,?,?,?,?, 'pending', ?, ?)",
                    (study_uid, revision, str(meta.SOPInstanceUID), str(meta.SOPClassUID), str(path), str(dest),
                     now, now),
                )
                added += cur.rowcount
    return added


def requeue_dead(index: Index, now: float, destination: str | None = None) -> int:
    """Give dead letters (all, or one destination's) a fresh retry budget, due now; returns how many.
    For after an outage longer than the retry budget, or a refusal that has been fixed at the PACS."""
    where = "state='dead'" + (" AND destination=?" if destination else "")
    with index.transaction() as c:
        cur = c.execute(f"UPDATE outbox SET state='pending', attempts=0, next_attempt_at=? WHERE {where}",
                        (now, *((destination,) if destination else ())))
        return cur.rowcount


class OutboxSender:
    """Sends due entries, one association per destination per round; runs as an apscheduler job."""

    def __init__(self, index: Index, calling_aet: str, policy: RetryPolicy = RetryPolicy(),
                 on_result: Callable[[str], None] = lambda result: None,
                 on_study_delivered: Callable[[str, int], None] = lambda uid, rev: None,
                 clock: Callable[[], float] = time.time, seed: int | None = None,
                 tls: "ssl.SSLContext | None" = None) -> None:
        self.index = index
        self.calling_aet = calling_aet
        self.policy = policy
        self.on_result = on_result
        self.on_study_delivered = on_study_delivered
        self.clock = clock
        self.rng = random.Random(seed)
        self.tls = tls
        self._lock = threading.Lock()  # one round at a time, even if the scheduler overlaps
        self._stopping = threading.Event()

    def stop(self) -> None:
        """Shutdown: the round in flight ends after its current instance; no new round starts."""
        self._stopping.set()

    def run_once(self) -> int:
        """Send everything due now; returns how many entries reached done."""
        if self._stopping.is_set() or not self._lock.acquire(blocking=False):
            return 0
        try:
            due = self.index.query(
                "SELECT * FROM outbox WHERE state='pending' AND next_attempt_at <= ? ORDER BY id", (self.clock(),))
            by_dest: dict[str, list] = {}
            for row in due:
                by_dest.setdefault(row["destination"], []).append(row)
            delivered = 0
            for dest, rows in by_dest.items():
                if self._stopping.is_set():
                    break
                try:
                    delivered += self._send_to(dest, rows)
                except ConfigError as exc:  # a stored destination that no longer parses: only its rows fail
                    for row in rows:
                        self._failed(row, SendOutcome(False, True, f"destination unusable: {exc}"))
                except Exception as exc:  # noqa: BLE001 - one destination must not stop the others' deliveries
                    log.error("%s", kv(event="outbox_destination_error", destination=dest, error=safe_reason(exc)))
            return delivered
        finally:
            self._lock.release()

    def _send_to(self, dest_text: str, rows: list) -> int:
        dest = Destination.parse(dest_text)
        ae = AE(ae_title=self.calling_aet)
        ae.acse_timeout, ae.dimse_timeout, ae.network_timeout, ae.connection_timeout = 30, 60, 60, 10
        contexts = {}
        for row in rows:
            contexts.setdefault(row["sop_class_uid"], build_context(
                row["sop_class_uid"], [ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
        assoc = ae.associate(dest.host, dest.port, contexts=list(contexts.values())[:128], ae_title=dest.ae_title,
                             tls_args=(self.tls, dest.host) if self.tls else None)
        if not assoc.is_established:
            permanent = assoc.is_rejected and getattr(assoc.acceptor.primitive, "result", None) == 0x01
            reason = "association rejected (permanent)" if permanent else (
                "association rejected (transient)" if assoc.is_rejected else "connection failed or aborted")
            for row in rows:
                self._failed(row, SendOutcome(False, permanent, reason))
            return 0
        delivered = 0
        try:
            for row in rows:
                if self._stopping.is_set():
                    break  # left pending, untouched: sent after the restart
                if not assoc.is_established:
                    self._failed(row, SendOutcome(False, False, "association lost"))
                    continue
                try:
                    ds = pydicom.dcmread(row["path"])
                except OSError as exc:  # missing or unreadable: may come back (a remount), so retried
                    self._failed(row, SendOutcome(False, False, f"cannot read: {type(exc).__name__}"))
                    continue
                except Exception as exc:  # noqa: BLE001 - a corrupt file: resending it cannot help
                    self._failed(row, SendOutcome(False, True, f"cannot read: {type(exc).__name__}"))
                    continue
                try:
                    # pynetdicom converts between the uncompressed syntaxes the peer accepted.
                    status = assoc.send_c_store(ds)
                except Exception as exc:  # noqa: BLE001 - one instance must not stall the rows behind it
                    # ValueError: not encodable in what the peer accepted; anything else (the peer
                    # aborted mid-send) is retried
                    self._failed(row, SendOutcome(False, isinstance(exc, ValueError),
                                                  f"cannot send: {type(exc).__name__}"))
                    continue
                code = int(status.Status) if status and "Status" in status else None
                outcome = classify_status(code)
                if outcome.ok:
                    self._done(row)
                    delivered += 1
                else:
                    self._failed(row, outcome)
        finally:
            if assoc.is_established:
                assoc.release()
        return delivered

    def _done(self, row) -> None:
        now = self.clock()
        with self.index.transaction() as c:
            c.execute("UPDATE outbox SET state='done', attempts=attempts+1, done_at=?, last_error=NULL WHERE id=?",
                      (now, row["id"]))
            remaining = c.execute(
                "SELECT COUNT(*) FROM outbox WHERE study_uid=? AND revision=? AND state='pending'",
                (row["study_uid"], row["revision"])).fetchone()[0]
        self.on_result("success")
        if remaining == 0:
            self.on_study_delivered(row["study_uid"], row["revision"])

    def _failed(self, row, outcome: SendOutcome) -> None:
        attempts = row["attempts"] + 1
        dead = outcome.permanent or attempts >= self.policy.max_attempts
        next_at = self.clock() + (0 if dead else self.policy.delay(attempts, self.rng))
        with self.index.transaction() as c:
            c.execute("UPDATE outbox SET state=?, attempts=?, next_attempt_at=?, last_error=? WHERE id=?",
                      ("dead" if dead else "pending", attempts, next_at, outcome.reason, row["id"]))
        self.on_result("dead_letter" if dead else "retry")
        (log.error if dead else log.warning)("%s", kv(
            event="result_dead_letter" if dead else "result_retry", destination=row["destination"],
            sop_instance_uid=row["sop_instance_uid"], attempts=attempts, reason=outcome.reason))
