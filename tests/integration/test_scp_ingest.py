"""The receiving node against real peers: DCMTK echoscu/storescu and pynetdicom, on loopback."""
from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from node.scp import ACCEPTED_TRANSFER_SYNTAXES
from tests.support.ctdata import SeriesSpec, dataset_sha256, uid, write_series, write_two_phase_study

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def storescu(port: int, files: list[Path] | Path, *flags: str, aet: str = "STORESCU", aec: str = "LIVERNODE"):
    args = ["storescu", "-aet", aet, "-aec", aec, *flags, "127.0.0.1", str(port)]
    if isinstance(files, Path):
        args += ["+sd", "+r", str(files)]
    else:
        args += [str(f) for f in files]
    return subprocess.run(args, capture_output=True, text=True, env=DCMTK_ENV, timeout=300)


def index_rows(node, sql: str, params=()):
    con = sqlite3.connect(node.data_dir / "index.sqlite", timeout=30)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def assert_stored_identical(node, files: list[Path]) -> None:
    stored = {r[0]: (r[1], r[2]) for r in index_rows(node, "SELECT sop_instance_uid, sha256, path FROM instances")}
    import pydicom

    for f in files:
        sop = str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
        assert sop in stored, f"{f.name} not indexed"
        digest, rel = stored[sop]
        assert digest == dataset_sha256(f)
        on_disk = node.data_dir / "spool" / rel
        assert dataset_sha256(on_disk) == digest  # the file itself, not only the index, is intact
        assert stat.S_IMODE(on_disk.stat().st_mode) == 0o600
        assert stat.S_IMODE(on_disk.parent.stat().st_mode) == 0o700


def test_dcmtk_echo_and_store(node_factory, tmp_path):
    node = node_factory("--no-worker")
    echo = subprocess.run(["echoscu", "-aec", "LIVERNODE", "127.0.0.1", str(node.dicom_port)], capture_output=True)
    assert echo.returncode == 0, echo.stderr
    files = write_two_phase_study(tmp_path / "study", uid("dcmtk-study"), slices=5)
    res = storescu(node.dicom_port, files)
    assert res.returncode == 0, res.stderr
    assert_stored_identical(node, files)
    assert index_rows(node, "PRAGMA integrity_check")[0][0] == "ok"


def test_pynetdicom_store_duplicate_and_conflict(node_factory, tmp_path):
    node = node_factory("--no-worker")
    files = write_series(tmp_path / "s", uid("pnd"), SeriesSpec("AP", 3))
    ae = AE(ae_title="PNDSCU")
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="LIVERNODE")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    for f in files:
        assert assoc.send_c_store(f).Status == 0x0000
    # Same instance again, identical bytes: success and no second copy.
    assert assoc.send_c_store(files[0]).Status == 0x0000
    # Same SOP Instance UID, different content: success, both kept.
    import pydicom

    changed = pydicom.dcmread(files[1])
    changed.SeriesDescription = "AP corrected"
    assert assoc.send_c_store(changed).Status == 0x0000
    assoc.release()
    rows = index_rows(node, "SELECT sop_instance_uid, COUNT(*) FROM instances GROUP BY sop_instance_uid")
    counts = sorted(n for _, n in rows)
    assert counts == [1, 1, 2]
    spool_files = list((node.data_dir / "spool" / "studies").rglob("*.dcm"))
    assert len(spool_files) == 4
    assert "sop_instance_conflict" in node.log_text()
    _, metrics = node.http("/metrics")
    assert 'liver_node_instances_received_total{result="duplicate"} 1.0' in metrics
    assert 'liver_node_instances_received_total{result="conflict"} 1.0' in metrics


def test_eight_concurrent_associations_200_instances_each(node_factory, tmp_path):
    node = node_factory("--no-worker", config="[node]\nmax_associations = 10\n")
    folders = []
    for a in range(8):
        study = uid("concurrent", a)
        folder = tmp_path / f"assoc{a}"
        write_series(folder, study, SeriesSpec("Portal venous", 200, number=a + 1))
        folders.append(folder)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda f: storescu(node.dicom_port, f), folders))
    for res in results:
        assert res.returncode == 0, res.stderr[-2000:]
    files = sorted(p for f in folders for p in f.iterdir())
    assert len(files) == 1600
    n = index_rows(node, "SELECT COUNT(*) FROM instances")[0][0]
    assert n == 1600
    assert_stored_identical(node, files)
    _, metrics = node.http("/metrics")
    assert 'liver_node_instances_received_total{result="stored"} 1600.0' in metrics
    assert not any((node.data_dir / "spool" / "incoming").iterdir())


def test_compressed_real_ct_accepted_as_is(node_factory):
    real = Path(__file__).resolve().parents[3] / "shared" / "realdata" / "compressed-ct-transfer-syntaxes"
    import pydicom

    files = []
    for p in sorted(real.rglob("*")):
        if not p.is_file() or p.suffix.lower() in (".md", ".txt") or p.name == "SHA256SUMS":
            continue
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
        except Exception:
            continue
        if str(ds.file_meta.get("MediaStorageSOPClassUID", "")) == CTImageStorage and ds.get("StudyInstanceUID"):
            files.append((p, str(ds.file_meta.TransferSyntaxUID)))
    syntaxes = {ts for _, ts in files}
    assert "1.2.840.10008.1.2.4.90" in syntaxes or "1.2.840.10008.1.2.4.91" in syntaxes, syntaxes
    assert "1.2.840.10008.1.2.5" in syntaxes, syntaxes
    node = node_factory("--no-worker")
    for p, ts in files:
        # A pynetdicom peer proposing only the file's own syntax: the node must store it as received.
        ae = AE(ae_title="PNDSCU")
        ae.add_requested_context(CTImageStorage, [ts])
        assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="LIVERNODE")
        if ts in ACCEPTED_TRANSFER_SYNTAXES:
            assert assoc.is_established
            assert assoc.send_c_store(pydicom.dcmread(p)).Status == 0x0000, p.name
            assoc.release()
        else:  # retired big endian, JPEG .53/.55 (lossy 12-bit, rare): no presentation context
            assert not assoc.is_established or not assoc.accepted_contexts, p.name
            if assoc.is_established:
                assoc.release()
    stored = {r[0] for r in index_rows(node, "SELECT transfer_syntax FROM instances")}
    assert {"1.2.840.10008.1.2.5"} <= stored
    assert stored & {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"}
    expected = {ts for _, ts in files if ts in ACCEPTED_TRANSFER_SYNTAXES}
    assert stored == expected


@pytest.mark.parametrize("cmd", ["serve"])
def test_bad_config_exits_2_naming_the_key(tmp_path, cmd):
    import sys

    bad = tmp_path / "bad.toml"
    bad.write_text("[node]\nae_titel = 'X'\n")
    res = subprocess.run([sys.executable, "-m", "node.cli", cmd, "--config", str(bad)], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert res.returncode == 2
    assert "node.ae_titel" in res.stderr
    bad.write_text("[studies]\nquiet_period = -1\n")
    res = subprocess.run([sys.executable, "-m", "node.cli", cmd, "--config", str(bad)], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert res.returncode == 2 and "studies.quiet_period" in res.stderr
