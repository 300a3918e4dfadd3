"""Received instances on disk: validated, written atomically, indexed, then acknowledged.

A C-STORE success from this node means: the bytes are fsynced under their final name, the
directory entry is fsynced, and the index row is committed (``synchronous=NORMAL``: a power cut may
drop the commit, and ``reindex_orphans`` restores the row from the fsynced file at start). Paths are
built from hashes only, never from a UID or an AE title (the storescp path-traversal CVEs).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import sqlite3
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag

from pipeline import header_values
from pipeline.phases import tm_before

from .index import Index, now, study_hash
from .logs import kv

log = logging.getLogger(__name__)

UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
PIXEL_DATA = Tag(0x7FE0, 0x0010)
UNDEFINED_LENGTH = 0xFFFFFFFF


class SpoolError(Exception):
    """An instance was not stored; ``status`` is the DICOM status to answer with."""

    status = 0xC000
    label = "invalid"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OutOfSpace(SpoolError):
    status = 0xA700
    label = "out_of_resources"


class UnreadableDataset(SpoolError):
    status = 0xC001
    label = "unreadable"


class MissingIdentifiers(SpoolError):
    status = 0xC002
    label = "missing_uids"


class TruncatedPixelData(SpoolError):
    status = 0xC003
    label = "truncated"


class InvalidIdentifier(SpoolError):
    status = 0xC004
    label = "invalid_uid"


class SOPClassMismatch(SpoolError):
    status = 0xA900  # Error: data set does not match SOP class
    label = "sop_class_mismatch"


@dataclass(frozen=True)
class StoreOutcome:
    study_uid: str
    duplicate: bool  # identical bytes already stored: nothing written
    conflict: bool  # same SOP Instance UID with different bytes: both kept

    @property
    def label(self) -> str:
        return "duplicate" if self.duplicate else "conflict" if self.conflict else "stored"


@dataclass(frozen=True)
class SeriesFields:
    modality: str | None
    description: str | None
    series_number: int | None
    image_type: str | None
    contrast_agent: str | None
    contrast_route: str | None
    contrast_start_time: str | None
    acquisition_time: str | None
    series_time: str | None
    protocol_name: str | None
    orientation: str | None


def _text(ds: Dataset, keyword: str) -> str | None:
    return _joined(ds.get(keyword))


def _joined(value) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value)


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def slice_position(ds: Dataset) -> float | None:
    """Position along the slice normal (mm), the sort key for a series."""
    try:
        iop = [float(v) for v in ds.ImageOrientationPatient]
        ipp = [float(v) for v in ds.ImagePositionPatient]
    except (AttributeError, TypeError, ValueError):
        return None
    if len(iop) != 6 or len(ipp) != 3:
        return None
    normal = np.cross(iop[:3], iop[3:])
    return float(np.dot(normal, ipp))


def series_fields(ds: Dataset) -> SeriesFields:
    return SeriesFields(
        modality=_text(ds, "Modality"),
        description=_text(ds, "SeriesDescription"),
        series_number=_int(ds, "SeriesNumber"),
        image_type=_text(ds, "ImageType"),
        contrast_agent=header_values.contrast_agent(ds),
        contrast_route=_text(ds, "ContrastBolusRoute"),
        contrast_start_time=header_values.bolus_start_time(ds),
        acquisition_time=header_values.acquisition_time(ds),
        series_time=_text(ds, "SeriesTime"),
        protocol_name=_text(ds, "ProtocolName"),
        orientation=_joined(header_values.orientation(ds)),
    )


def _meta_end(path: Path) -> int:
    """Offset of the data set after the preamble and the File Meta group written by pynetdicom."""
    with open(path, "rb") as f:
        head = f.read(144)
    if len(head) == 144 and head[128:132] == b"DICM" and head[132:136] == b"\x02\x00\x00\x00":
        (group_length,) = struct.unpack("<I", head[140:144])
        return 144 + group_length
    return 0


def dataset_sha256(path: Path, offset: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_pixel_length(ds: Dataset, file_size: int) -> None:
    """pydicom accepts truncated native pixel data silently; compare the declared and expected sizes."""
    raw = ds.get_item(PIXEL_DATA) if PIXEL_DATA in ds else None
    if raw is None:
        return
    if isinstance(raw, RawDataElement):  # deferred: declared length and where its value starts
        length, value_tell = raw.length, raw.value_tell
    else:  # read in full (small, or the file ended early): what was actually read
        value = raw.value
        length, value_tell = (len(value), None) if isinstance(value, (bytes, bytearray)) else (None, None)
        if raw.is_undefined_length:
            length = None
    if length is None or length == UNDEFINED_LENGTH:
        return  # encapsulated: checked when decoded
    if value_tell is not None and value_tell + length > file_size:
        raise TruncatedPixelData(f"pixel data declares {length} bytes but the file ends {value_tell + length - file_size} bytes early")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits, spp = int(ds.BitsAllocated), int(ds.get("SamplesPerPixel", 1))
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        raise UnreadableDataset("image pixel module incomplete (Rows/Columns/BitsAllocated)") from None
    expected = (rows * cols * spp * frames * bits + 7) // 8
    if length < expected:
        raise TruncatedPixelData(f"pixel data holds {length} bytes, {expected} expected")


@dataclass(frozen=True)
class InstanceInfo:
    """What the index needs of one instance, read from its headers (pixels are never decoded)."""

    sop_class: str
    sop_instance: str
    study_uid: str
    series_uid: str
    transfer_syntax: str
    instance_number: int | None
    position: float | None
    series: SeriesFields
    sha256: str  # of the data set without preamble and file meta
    size: int


def inspect_instance(path: Path) -> InstanceInfo:
    """Parse and validate a received file; raises the SpoolError subclass that names the problem."""
    file_size = path.stat().st_size
    try:
        ds = pydicom.dcmread(path, defer_size=4096)
        info = dict(
            sop_class=str(ds.get("SOPClassUID", "") or ""),
            sop_instance=str(ds.get("SOPInstanceUID", "") or ""),
            study_uid=str(ds.get("StudyInstanceUID", "") or ""),
            series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
            transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
            instance_number=_int(ds, "InstanceNumber"),
            position=slice_position(ds),
            series=series_fields(ds),
        )
    except (InvalidDicomError, EOFError, OSError, ValueError, TypeError, KeyError, struct.error, AttributeError) as exc:
        raise UnreadableDataset(f"data set cannot be parsed ({type(exc).__name__})") from None
    uids = [("StudyInstanceUID", info["study_uid"]), ("SeriesInstanceUID", info["series_uid"]),
            ("SOPInstanceUID", info["sop_instance"])]
    missing = [k for k, v in uids if not v]
    if missing:
        raise MissingIdentifiers("missing " + ", ".join(missing))
    for keyword, uid in uids:
        if len(uid) > 64 or not UID_RE.match(uid):
            raise InvalidIdentifier(f"{keyword} is not a valid UID")
    _check_pixel_length(ds, file_size)
    return InstanceInfo(**info, sha256=dataset_sha256(path, _meta_end(path)), size=file_size)


class Spool:
    """Owns the spool folders of one data directory and writes instances into them."""

    def __init__(self, data_dir: Path, index: Index, min_free_bytes: int) -> None:
        self.root = data_dir / "spool"
        self.incoming = self.root / "incoming"
        self.studies = self.root / "studies"
        self.index = index
        self.min_free_bytes = min_free_bytes
        for d in (data_dir, self.root, self.incoming, self.studies):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(d, 0o700)
        # Storing into a study and purging it (retention) must not interleave: a late instance stored
        # between retention's choice and its delete would be acknowledged and then deleted.
        # Striped, so the number of locks stays fixed however many studies pass through.
        self._study_locks = tuple(threading.Lock() for _ in range(64))

    def study_lock(self, study_uid: str) -> threading.Lock:
        return self._study_locks[int(study_hash(study_uid)[:8], 16) % len(self._study_locks)]

    def sweep_incoming(self, older_than_s: float | None = None) -> int:
        """Remove partial receptions (never acknowledged, so never promised): all of them at start,
        after a crash; while serving, those untouched for ``older_than_s`` (an aborted or stalled
        association's data set; a live transfer writes to its file with every fragment)."""
        removed = 0
        cutoff = time.time() - older_than_s if older_than_s is not None else None
        for p in self.incoming.iterdir():
            try:
                if cutoff is not None and p.stat().st_mtime >= cutoff:
                    continue
                p.unlink()
            except FileNotFoundError:  # consumed by its handler meanwhile
                continue
            removed += 1
        return removed

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def has_room(self) -> bool:
        return self.free_bytes() >= self.min_free_bytes

    def study_dir(self, study_uid: str) -> Path:
        return self.studies / study_hash(study_uid)[:32]

    def store(
        self,
        temp_path: Path,
        *,
        command_sop_class: str,
        command_sop_instance: str,
        assoc_id: str,
        calling_aet: str,
    ) -> StoreOutcome:
        """Validate, place and index one received file; raises a SpoolError subclass on refusal.

        ``temp_path`` is consumed: moved into the study folder or removed.
        """
        try:
            return self._store(temp_path, command_sop_class, command_sop_instance, assoc_id, calling_aet)
        finally:
            temp_path.unlink(missing_ok=True)

    def _store(
        self, temp_path: Path, command_sop_class: str, command_sop_instance: str, assoc_id: str, calling_aet: str
    ) -> StoreOutcome:
        if not self.has_room():
            raise OutOfSpace(f"free space below watermark ({self.min_free_bytes // (1 << 20)} MiB)")
        info = inspect_instance(temp_path)
        if info.sop_class and info.sop_class != command_sop_class:
            raise SOPClassMismatch("SOP Class UID in the data set differs from the C-STORE request")
        if info.sop_instance != command_sop_instance:
            raise SOPClassMismatch("SOP Instance UID in the data set differs from the C-STORE request")
        if self.index.find_instance(info.sop_instance, info.sha256) is not None:
            return StoreOutcome(info.study_uid, duplicate=True, conflict=False)
        conflict = self.index.count_versions(info.sop_instance) > 0

        with self.study_lock(info.study_uid):
            study_dir = self.study_dir(info.study_uid)
            if not study_dir.exists():
                study_dir.mkdir(mode=0o700, exist_ok=True)
                _fsync_dir(self.studies)
            final = study_dir / f"{info.sha256}.dcm"
            # The fsynced file under its final name is the durable record of the acknowledgement; the
            # index row is re-derived from it by reindex_orphans() if a power loss drops the last commit.
            _fsync_file(temp_path)
            os.chmod(temp_path, 0o600)
            os.replace(temp_path, final)
            _fsync_dir(study_dir)
            if not self._index(info, final, assoc_id, calling_aet):
                # The same bytes arrived concurrently on another association and won the insert.
                return StoreOutcome(info.study_uid, duplicate=True, conflict=False)
        if conflict:
            log.warning("%s", kv(event="sop_instance_conflict", sop_instance_uid=info.sop_instance,
                                 study_uid=info.study_uid, action="kept_both"))
        return StoreOutcome(info.study_uid, duplicate=False, conflict=conflict)

    def _index(self, info: "InstanceInfo", final: Path, assoc_id: str | None, calling_aet: str | None) -> bool:
        """Insert the instance, its series and its study; False if that exact instance is already there."""
        received = now()
        f = info.series
        try:
            with self.index.transaction() as c:
                c.execute(
                    "INSERT INTO instances (sop_instance_uid, sop_class_uid, series_uid, study_uid, path, sha256, size,"
                    " transfer_syntax, instance_number, slice_position, received_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (info.sop_instance, info.sop_class, info.series_uid, info.study_uid,
                     str(final.relative_to(self.root)), info.sha256, info.size, info.transfer_syntax,
                     info.instance_number, info.position, received),
                )
                c.execute(
                    "INSERT INTO studies (study_uid, state, first_received, last_received, last_assoc, calling_aet)"
                    " VALUES (?, 'receiving', ?, ?, ?, ?) ON CONFLICT(study_uid) DO UPDATE SET"
                    # a study reopened after its analysis waits from its new first instance: else its
                    # old first_received meets max_wait at once and every later association re-analyses it
                    " first_received=CASE WHEN studies.state='receiving' THEN studies.first_received"
                    " ELSE excluded.first_received END,"
                    " state='receiving', last_received=excluded.last_received, last_assoc=excluded.last_assoc,"
                    " last_assoc_released=0, calling_aet=COALESCE(excluded.calling_aet, studies.calling_aet)",
                    (info.study_uid, received, received, assoc_id, calling_aet),
                )
                # The series starts at its earliest slice, on the clock's circle (a scan across midnight).
                known = c.execute("SELECT acquisition_time FROM series WHERE study_uid=? AND series_uid=?",
                                  (info.study_uid, info.series_uid)).fetchone()
                start = f.acquisition_time
                if known is None:
                    other = c.execute("SELECT study_uid FROM series WHERE series_uid=? LIMIT 1",
                                      (info.series_uid,)).fetchone()
                    if other is not None:
                        # One Series UID in two studies (a PACS re-sending a reconciled patient's series):
                        # each study keeps its own row and reads only its own instances.
                        log.warning("%s", kv(event="series_in_two_studies", series_uid=info.series_uid,
                                             first_study=other[0], study_uid=info.study_uid))
                elif not tm_before(f.acquisition_time, known[0]):
                    start = known[0]
                c.execute(
                    "INSERT INTO series (series_uid, study_uid, modality, description, series_number, image_type,"
                    " contrast_agent, contrast_route, contrast_start_time, acquisition_time, series_time,"
                    " protocol_name, orientation) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
                    " ON CONFLICT(study_uid, series_uid) DO UPDATE SET acquisition_time = excluded.acquisition_time",
                    (info.series_uid, info.study_uid, f.modality, f.description, f.series_number,
                     f.image_type, f.contrast_agent, f.contrast_route, f.contrast_start_time,
                     start, f.series_time, f.protocol_name, f.orientation),
                )
        except sqlite3.IntegrityError:
            return False
        return True

    def reindex_orphans(self) -> int:
        """Index files that are in the spool but not in the index (a commit lost to a power cut).

        Such a file was fsynced before its C-STORE was answered, so it may have been acknowledged.
        """
        known = {r[0] for r in self.index.query("SELECT path FROM instances")}
        restored = 0
        for path in self.studies.glob("*/*.dcm"):
            if str(path.relative_to(self.root)) in known:
                continue
            try:
                info = inspect_instance(path)
            except SpoolError as exc:
                log.error("%s", kv(event="orphan_unreadable", file=path.name, reason=exc.reason))
                continue
            if self._index(info, path, None, None):
                restored += 1
        if restored:
            log.warning("%s", kv(event="orphans_reindexed", count=restored))
        return restored

    def absolute(self, relative: str) -> Path:
        return self.root / relative


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
