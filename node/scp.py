"""The DICOM listener: C-ECHO and C-STORE SCP on pynetdicom, with thin handlers.

Handlers check the peer, hand the received file to the spool and answer a status; nothing slow
(pixel decoding, inference) runs on an association thread. Protections that stock pynetdicom lacks
(reliability notes §4): a socket timeout from connection open, a cap on the PDU length a peer may
send, TCP_NODELAY, chunked receive into the spool's own folder, identifier logging off.
"""
from __future__ import annotations

import errno
import ipaddress
import itertools
import logging
import os
import socket
import sqlite3
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import CTImageStorage, EnhancedCTImageStorage, Verification
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from .config import Settings
from .logs import kv
from .metrics import NodeMetrics
from .spool import Spool, SpoolError
from .tls import DeferredHandshakeServer, server_context

log = logging.getLogger(__name__)

# Explicit VR Little Endian first: pynetdicom accepts the first of its own list that the peer
# proposes, and a sender whose data is explicit would otherwise transcode every instance.
ACCEPTED_TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)
DEFAULT_STORAGE_SOP_CLASSES: tuple[str, ...] = (CTImageStorage, EnhancedCTImageStorage)

# A-ASSOCIATE-RJ (result, source, diagnostic)
RJ_CALLING_AE = (0x01, 0x01, 0x03)
RJ_CALLED_AE = (0x01, 0x01, 0x07)
RJ_NO_REASON = (0x01, 0x01, 0x01)
RJ_LIMIT = (0x02, 0x03, 0x02)


@dataclass
class _AssocState:
    id: str
    calling_aet: str
    studies: set[str] = field(default_factory=set)


class StorageSCP:
    """Owns the pynetdicom AE and its server; calls ``on_instance`` and ``on_release`` for assembly."""

    def __init__(
        self,
        settings: Settings,
        spool: Spool,
        metrics: NodeMetrics,
        on_instance: Callable[[str], None],
        on_release: Callable[[str, set[str]], None],
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.metrics = metrics
        self.on_instance = on_instance
        self.on_release = on_release
        self._assocs: dict[int, _AssocState] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._boot = f"{os.getpid():x}{int(time.time()) & 0xFFFFFF:x}"
        self._allowed_nets = [ipaddress.ip_network(h, strict=False) for h in settings.access.allowed_hosts]
        self._accepting = True
        self.server = None
        self.accept_thread: threading.Thread | None = None
        self.ae = self._build_ae()

    # --- set-up -----------------------------------------------------------------------------
    def _build_ae(self) -> AE:
        n = self.settings.node
        # Chunked receive writes each data set to a temp file; put it on the spool filesystem so the
        # handler can rename it into place, and so a crash leaves PHI only where the sweep finds it.
        _config.STORE_RECV_CHUNKED_DATASET = True
        tempfile.tempdir = str(self.spool.incoming)
        ae = AE(ae_title=n.ae_title)
        ae.maximum_associations = n.max_associations
        ae.maximum_pdu_size = n.max_pdu
        ae.acse_timeout = n.acse_timeout
        ae.dimse_timeout = n.dimse_timeout
        ae.network_timeout = n.network_timeout
        ae.require_called_aet = False  # checked in _on_requested, with metrics and a log line
        ae.add_supported_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        for uid in self.storage_sop_classes():
            ae.add_supported_context(uid, list(ACCEPTED_TRANSFER_SYNTAXES))
        return ae

    def storage_sop_classes(self) -> list[str]:
        extra = [u for u in self.settings.node.extra_sop_classes if u not in DEFAULT_STORAGE_SOP_CLASSES]
        return [*DEFAULT_STORAGE_SOP_CLASSES, *extra]

    def start(self) -> int:
        """Bind and serve in background threads; returns the bound port (useful when port 0)."""
        handlers = [
            (evt.EVT_CONN_OPEN, self._on_conn_open),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
        ]
        n = self.settings.node
        ssl_context = server_context(self.settings.tls_files) if self.settings.tls.enabled else None
        self.server = self.ae.make_server((n.bind, n.port), ssl_context=ssl_context, evt_handlers=handlers,
                                          server_class=DeferredHandshakeServer)
        self.ae._servers.append(self.server)  # as start_server does: the server's shutdown() expects it
        self.accept_thread = threading.Thread(target=self.server.serve_forever, name="dicom-accept", daemon=True)
        self.accept_thread.start()
        return int(self.server.server_address[1])

    def stop_accepting(self) -> None:
        """New associations are refused (transient) while the node drains."""
        self._accepting = False

    def active_associations(self) -> int:
        return len(self.ae.active_associations)

    def shutdown(self, drain_timeout: float) -> None:
        """Stop listening, let live associations finish for up to ``drain_timeout``, abort the rest."""
        self.stop_accepting()
        deadline = time.monotonic() + drain_timeout
        while self.ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.server is not None:
            self.server.shutdown()
        for assoc in self.ae.active_associations:
            assoc.abort()

    # --- association events -----------------------------------------------------------------
    def _on_conn_open(self, event: evt.Event) -> None:
        sock = event.assoc.dul.socket
        raw = sock.socket
        raw.settimeout(self.settings.node.socket_timeout)
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not a TCP socket (e.g. in tests over socketpair)
        cap = self.settings.node.max_pdu_accepted

        def capped_recv(nr_bytes: int) -> bytearray:
            # Refuse before allocating: a peer may declare any PDU length, even in its A-ASSOCIATE-RQ.
            if nr_bytes > cap:
                log.warning("%s", kv(event="pdu_too_long", declared=nr_bytes, limit=cap))
                raise OSError("PDU length over the configured limit")
            # One preallocated buffer filled by recv_into, instead of pynetdicom's 4 KiB reads and
            # bytearray extends: a 128 KiB PDU costs a few system calls instead of 32.
            buf = bytearray(nr_bytes)
            view = memoryview(buf)
            got = 0
            while got < nr_bytes:
                n = raw.recv_into(view[got:], nr_bytes - got)
                if n == 0:  # peer closed: pynetdicom sees the short read and closes the association
                    return buf[:got]
                got += n
            return buf

        sock.recv = capped_recv

    def _reject(self, event: evt.Event, rsd: tuple[int, int, int], label: str, **fields: object) -> None:
        event.assoc.acse.send_reject(*rsd)
        self.metrics.associations.labels(label).inc()
        log.warning("%s", kv(event="association_rejected", reason=label, **fields))
        event.assoc.kill()

    def _on_requested(self, event: evt.Event) -> None:
        rq = event.assoc.requestor.primitive
        calling = str(rq.calling_ae_title).strip()
        called = str(rq.called_ae_title).strip()
        host = event.assoc.requestor.address
        access = self.settings.access
        peer = {"calling_aet": ascii(calling), "peer": host}
        if not self._accepting:
            self._reject(event, (0x02, 0x03, 0x01), "rejected_shutdown", **peer)
        elif self._allowed_nets and not self._host_allowed(host):
            self._reject(event, RJ_NO_REASON, "rejected_host", **peer)
        elif access.allowed_calling_aets and calling not in access.allowed_calling_aets:
            self._reject(event, RJ_CALLING_AE, "rejected_calling_aet", **peer)
        elif access.check_called_aet and called != self.settings.node.ae_title:
            self._reject(event, RJ_CALLED_AE, "rejected_called_aet", called_aet=ascii(called), **peer)
        elif sum(1 for a in self.ae.active_associations if a.is_acceptor) > self.settings.node.max_associations:
            self._reject(event, RJ_LIMIT, "rejected_limit", **peer)

    def _host_allowed(self, host: str) -> bool:
        try:
            addr = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        # on a dual-stack listener (bind "::") an IPv4 peer arrives as ::ffff:a.b.c.d
        mapped = getattr(addr, "ipv4_mapped", None)
        return any(addr in net or (mapped is not None and mapped in net) for net in self._allowed_nets)

    def _on_established(self, event: evt.Event) -> None:
        state = _AssocState(id=f"{self._boot}-{next(self._ids)}", calling_aet=str(event.assoc.requestor.ae_title).strip())
        with self._lock:
            self._assocs[id(event.assoc)] = state
        self.metrics.associations.labels("accepted").inc()

    def _finish(self, event: evt.Event, released: bool) -> None:
        with self._lock:
            state = self._assocs.pop(id(event.assoc), None)
        if state is None:
            return
        if not released:
            self.metrics.associations.labels("aborted").inc()
        if released and state.studies:
            self.on_release(state.id, state.studies)

    def _on_released(self, event: evt.Event) -> None:
        self._finish(event, released=True)

    def _on_aborted(self, event: evt.Event) -> None:
        _discard_partial_dataset(event.assoc)
        self._finish(event, released=False)

    # --- DIMSE --------------------------------------------------------------------------------
    def _on_echo(self, event: evt.Event) -> int:
        return 0x0000

    def _on_store(self, event: evt.Event) -> int:
        started = time.perf_counter()
        with self._lock:
            state = self._assocs.get(id(event.assoc))
        req = event.request
        temp_path = Path(event.dataset_path)
        if state is None:  # cannot happen on an established association; refuse rather than guess
            temp_path.unlink(missing_ok=True)
            return 0xA700
        try:
            outcome = self.spool.store(
                temp_path,
                command_sop_class=str(req.AffectedSOPClassUID),
                command_sop_instance=str(req.AffectedSOPInstanceUID),
                assoc_id=state.id,
                calling_aet=state.calling_aet,
            )
        except SpoolError as exc:
            self.metrics.instances.labels(exc.label).inc()
            log.warning("%s", kv(event="store_refused", status=f"0x{exc.status:04X}", reason=exc.reason,
                                 assoc=state.id, sop_instance_uid=_safe_uid(req.AffectedSOPInstanceUID)))
            return exc.status
        except OSError as exc:
            # ENOSPC/EDQUOT from write, fsync or rename, or any other I/O failure: nothing was promised.
            label = "out_of_resources"
            self.metrics.instances.labels(label).inc()
            log.error("%s", kv(event="store_failed", status="0xA700", reason=errno.errorcode.get(exc.errno or 0, "io_error"),
                               assoc=state.id))
            return 0xA700
        except sqlite3.Error as exc:
            self.metrics.instances.labels("out_of_resources").inc()
            log.error("%s", kv(event="store_failed", status="0xA700", reason=f"index: {type(exc).__name__}", assoc=state.id))
            return 0xA700
        self.metrics.ingest_seconds.observe(time.perf_counter() - started)
        self.metrics.instances.labels(outcome.label).inc()
        if not outcome.duplicate:
            state.studies.add(outcome.study_uid)
            self.on_instance(outcome.study_uid)
        return 0x0000


def _discard_partial_dataset(assoc) -> None:
    """Delete the temp file of a data set cut off by an abort (PHI that was never acknowledged).

    pynetdicom's chunked receive opens it when the command arrives and unlinks it only after the
    C-STORE handler ran, so an abort mid-transfer leaves it behind. The attributes are pynetdicom
    internals, read defensively; the retention job's sweep of stale files is the backstop.
    """
    dimse = getattr(assoc, "dimse", None)
    msg = getattr(dimse, "message", None)
    path = getattr(msg, "_data_set_path", None)
    if path is None:
        return
    handle = getattr(msg, "_data_set_file", None)
    try:
        if handle is not None:
            handle.close()
        Path(path).unlink(missing_ok=True)
    except OSError as exc:
        log.warning("%s", kv(event="partial_dataset_not_removed", reason=type(exc).__name__))


def _safe_uid(value: object) -> str:
    text = str(value or "")
    return text if len(text) <= 64 and all(c.isdigit() or c == "." for c in text) else "<invalid>"
