"""Outgoing associations: C-ECHO and C-STORE of files or folders (``liver-node echo`` / ``send``)."""
from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification

from .config import Destination
from .logs import kv

log = logging.getLogger(__name__)

MAX_CONTEXTS = 128  # the DICOM limit on presentation contexts per association


class SCUError(Exception):
    """An outgoing association failed; ``permanent`` tells whether retrying can help."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass
class SendReport:
    sent: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def _ae(calling_aet: str) -> AE:
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = 30
    ae.dimse_timeout = 120
    ae.network_timeout = 60
    ae.connection_timeout = 10  # pynetdicom's default waits forever on an unreachable host
    ae.maximum_pdu_size = 131072
    return ae


def _associate(ae: AE, dest: Destination, contexts=None):
    assoc = ae.associate(dest.host, dest.port, contexts=contexts, ae_title=dest.ae_title)
    if not assoc.is_established:
        if assoc.is_rejected:
            raise SCUError(f"association rejected by {dest}", permanent=True)
        raise SCUError(f"no association with {dest} (refused, aborted or timed out)")
    sock = assoc.dul.socket.socket if assoc.dul.socket else None
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
    return assoc


def echo(dest: Destination, calling_aet: str) -> int:
    """Return the C-ECHO status (0 = success); raises SCUError when no association is made."""
    ae = _ae(calling_aet)
    assoc = _associate(ae, dest, [build_context(Verification)])
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if not status:
        raise SCUError("no C-ECHO response (timeout or abort)")
    return int(status.Status)


def iter_dicom_files(paths: Iterable[Path]) -> Iterable[Path]:
    for p in paths:
        if p.is_dir():
            yield from sorted(q for q in p.rglob("*") if q.is_file())
        else:
            yield p


def send(paths: Iterable[Path], dest: Destination, calling_aet: str) -> SendReport:
    """C-STORE every DICOM file under ``paths`` to ``dest`` on one association, as stored."""
    report = SendReport()
    files: list[tuple[Path, str, str]] = []
    for path in iter_dicom_files(paths):
        try:
            meta = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
            files.append((path, str(meta.file_meta.MediaStorageSOPClassUID), str(meta.file_meta.TransferSyntaxUID)))
        except (InvalidDicomError, AttributeError, OSError, ValueError) as exc:
            report.skipped.append((path, f"not a DICOM file ({type(exc).__name__})"))
    pairs = sorted({(c, t) for _, c, t in files})
    contexts = []
    for sop_class in sorted({c for c, _ in pairs}):
        syntaxes = sorted({t for c, t in pairs if c == sop_class} | {ExplicitVRLittleEndian, ImplicitVRLittleEndian})
        contexts.append(build_context(sop_class, syntaxes))
    if len(contexts) > MAX_CONTEXTS:
        raise SCUError(f"{len(contexts)} SOP classes need more than {MAX_CONTEXTS} presentation contexts", permanent=True)
    if not files:
        return report
    _config.STORE_SEND_CHUNKED_DATASET = False
    ae = _ae(calling_aet)
    assoc = _associate(ae, dest, contexts)
    try:
        for i, (path, _, _) in enumerate(files):
            try:
                status = assoc.send_c_store(path)
            except (ValueError, AttributeError, RuntimeError) as exc:
                report.failed.append((path, f"cannot send: {exc}"))
                continue
            code = int(status.Status) if status and "Status" in status else None
            if code is None:
                report.failed.append((path, "no response (timeout or abort)"))
                if not assoc.is_established:
                    report.failed.extend((p, "not sent: association lost") for p, _, _ in files[i + 1:])
                    break
            elif code == 0x0000 or (code & 0xF000) == 0xB000:
                report.sent += 1
            else:
                report.failed.append((path, f"status 0x{code:04X}"))
    finally:
        if assoc.is_established:
            assoc.release()
    log.info("%s", kv(event="send_done", dest=str(dest), sent=report.sent, failed=len(report.failed)))
    return report
