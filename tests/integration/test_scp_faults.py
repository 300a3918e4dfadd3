"""Bad input and hostile peers: each gets its specific status or rejection, and the node serves on."""
from __future__ import annotations

import sqlite3
import subprocess

import pydicom
import pytest
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification

from tests.support.ctdata import SeriesSpec, ct_instance, uid, write_series


def _ae(aet: str = "PNDSCU") -> AE:
    ae = AE(ae_title=aet)
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(Verification)
    ae.add_requested_context(MRImageStorage)
    return ae


def _echo_ok(node) -> None:
    assoc = _ae().associate("127.0.0.1", node.dicom_port, ae_title="LIVERNODE")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assoc.release()


def _store(node, ds, aet: str = "PNDSCU") -> int:
    assoc = _ae(aet).associate("127.0.0.1", node.dicom_port, ae_title="LIVERNODE")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()


def _instance(tag: str, **kw):
    study = uid("fault", tag)
    return ct_instance(study, uid(study, "s"), 0, SeriesSpec("AP", 1), rows=64, cols=64, **kw)


def _count(node) -> int:
    con = sqlite3.connect(node.data_dir / "index.sqlite")
    try:
        return con.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
    finally:
        con.close()


@pytest.fixture
def node(node_factory):
    return node_factory("--no-worker")


def test_invalid_datasets_get_specific_failure_status(node, tmp_path):
    ds = _instance("missing")
    del ds.StudyInstanceUID
    assert _store(node, ds) == 0xC002

    ds = _instance("short-pixels")
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    assert _store(node, ds) == 0xC003

    ds = _instance("traversal")
    ds.StudyInstanceUID = "../../etc/x"
    assert _store(node, ds) == 0xC004

    # A file cut in the middle of its pixel data, streamed raw as a crashed sender would leave it.
    good = _instance("cut")
    path = tmp_path / "cut.dcm"
    good.save_as(path, enforce_file_format=True)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 3000])
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = _ae().associate("127.0.0.1", node.dicom_port, ae_title="LIVERNODE")
        status = int(assoc.send_c_store(path).Status)
        # ...and one cut inside its header.
        path.write_bytes(raw[:400])
        status_header = int(assoc.send_c_store(path).Status)
        # A data set claiming MR Image Storage, sent under the CT context its file meta names.
        _instance("mismatch").save_as(path, enforce_file_format=True)
        raw = path.read_bytes()
        meta_end = 144 + int.from_bytes(raw[140:144], "little")
        # CT and MR Image Storage UIDs have the same length: patch the data set's copy only.
        path.write_bytes(raw[:meta_end] + raw[meta_end:].replace(CTImageStorage.encode(), MRImageStorage.encode(), 1))
        status_mismatch = int(assoc.send_c_store(path).Status)
        assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
    assert status == 0xC003
    assert 0xC000 <= status_header <= 0xCFFF
    assert status_mismatch == 0xA900

    assert _count(node) == 0
    assert not list((node.data_dir / "spool" / "studies").rglob("*.dcm"))
    assert not any((node.data_dir / "spool" / "incoming").iterdir())
    assert not (tmp_path / "etc").exists() and not (node.data_dir / "etc").exists()
    log = node.log_text()
    for reason in ("missing StudyInstanceUID", "pixel data holds", "not a valid UID"):
        assert reason in log
    _echo_ok(node)
    assert _store(node, _instance("after")) == 0x0000


def test_unsupported_sop_class_is_not_negotiated(node):
    ae = AE(ae_title="PNDSCU")
    ae.add_requested_context(MRImageStorage)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="LIVERNODE")
    assert assoc.is_established
    assert [cx.abstract_syntax for cx in assoc.accepted_contexts] == [Verification]
    assoc.release()
    _echo_ok(node)


def _rejection(node, aet: str = "PNDSCU", called: str = "LIVERNODE"):
    assoc = _ae(aet).associate("127.0.0.1", node.dicom_port, ae_title=called)
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    return rj.result, rj.result_source, rj.diagnostic


def test_association_policies(node_factory):
    node = node_factory("--no-worker", config='[access]\nallowed_calling_aets = ["PNDSCU"]\n')
    assert _rejection(node, aet="INTRUDER") == (0x01, 0x01, 0x03)
    assert _rejection(node, called="OTHERAE") == (0x01, 0x01, 0x07)
    echo = subprocess.run(["echoscu", "-aet", "INTRUDER", "-aec", "LIVERNODE", "127.0.0.1", str(node.dicom_port)],
                          capture_output=True, text=True)
    assert echo.returncode != 0
    _echo_ok(node)
    _, metrics = node.http("/metrics")
    assert 'liver_node_associations_total{result="rejected_calling_aet"} 2.0' in metrics
    assert 'liver_node_associations_total{result="rejected_called_aet"} 1.0' in metrics

    other = node_factory("--no-worker", config='[access]\nallowed_hosts = ["10.0.0.0/8"]\n', name="hosts")
    assert _rejection(other) == (0x01, 0x01, 0x01)
    # listening on "::" (dual stack), an IPv4 peer arrives as ::ffff:127.0.0.1 and still matches 127.0.0.0/8
    dual = node_factory("--no-worker", config='[node]\nbind = "::"\n[access]\nallowed_hosts = ["127.0.0.0/8"]\n',
                        name="dual")
    _echo_ok(dual)


def test_association_limit(node_factory):
    node = node_factory("--no-worker", config="[node]\nmax_associations = 2\n")
    held = [_ae().associate("127.0.0.1", node.dicom_port, ae_title="LIVERNODE") for _ in range(2)]
    assert all(a.is_established for a in held)
    assert _rejection(node) == (0x02, 0x03, 0x02)
    for a in held:
        a.release()
    # Released slots are free again (the node notices the release asynchronously).
    node.wait_for(lambda: _try_echo(node), timeout=10)


def test_disk_watermark_answers_out_of_resources(node_factory):
    node = node_factory("--no-worker", config="[node]\nmin_free_mb = 1000000000\n")
    assert _store(node, _instance("full")) == 0xA700
    assert _count(node) == 0
    _echo_ok(node)
    status, body = node.http("/readyz")
    assert status == 503 and "watermark" in body


def test_stalled_peer_and_oversized_pdu_do_not_pin_slots(node_factory):
    import socket
    import struct
    import time

    node = node_factory("--no-worker", config="[node]\nmax_associations = 2\nsocket_timeout = 2.0\nacse_timeout = 3.0\n")
    # Two peers that send half a PDU header and stall, one that declares a 1 GiB A-ASSOCIATE-RQ.
    stalled = [socket.create_connection(("127.0.0.1", node.dicom_port)) for _ in range(2)]
    for s in stalled:
        s.sendall(b"\x01\x00\x00")
    huge = socket.create_connection(("127.0.0.1", node.dicom_port))
    huge.sendall(struct.pack(">BBL", 0x01, 0x00, 1 << 30) + b"\x00" * 1024)
    huge.settimeout(10)
    assert huge.recv(16) == b""  # closed by the node without reading the declared gigabyte
    started = time.monotonic()
    node.wait_for(lambda: _try_echo(node), timeout=30, interval=0.5)
    assert time.monotonic() - started < 20
    for s in stalled + [huge]:
        s.close()
    assert "pdu_too_long" in node.log_text()


def test_an_abort_mid_data_set_leaves_no_partial_file(node, monkeypatch):
    """A peer that dies after the command and part of the data set: pynetdicom has already spooled the
    partial data set (PHI) to a temp file; the node deletes it on the abort, not at its next start."""
    from pynetdicom import dimse_messages

    class Cut(Exception):
        pass

    encode = dimse_messages.DIMSEMessage.encode_msg

    def cut_after_two_fragments(self, context_id, max_pdu):
        for i, pdata in enumerate(encode(self, context_id, max_pdu)):
            if isinstance(self, dimse_messages.C_STORE_RQ) and i == 2:
                raise Cut()
            yield pdata

    monkeypatch.setattr(dimse_messages.DIMSEMessage, "encode_msg", cut_after_two_fragments)
    incoming = node.data_dir / "spool" / "incoming"
    ae = _ae()
    ae.maximum_pdu_size = 16384
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="LIVERNODE")
    assert assoc.is_established
    ds = ct_instance(uid("abort"), uid("abort", "s"), 0, SeriesSpec("AP", 1), rows=256, cols=256)
    with pytest.raises(Cut):
        assoc.send_c_store(ds)
    node.wait_for(lambda: any(incoming.iterdir()), timeout=10, interval=0.1)  # the partial file exists
    assoc.abort()
    node.wait_for(lambda: not any(incoming.iterdir()), timeout=10, interval=0.1)
    monkeypatch.undo()
    _echo_ok(node)  # and the node serves on


def _try_echo(node) -> bool:
    assoc = _ae().associate("127.0.0.1", node.dicom_port, ae_title="LIVERNODE")
    if not assoc.is_established:
        return False
    ok = assoc.send_c_echo().Status == 0
    assoc.release()
    return ok


def test_phi_canary_never_leaves_the_spool(node_factory, tmp_path):
    node = node_factory(config="[studies]\nquiet_period = 1.0\n")
    study = uid("canary")
    src = tmp_path / "canary-src"
    # Values that make the libraries complain, quoting them: a name without "^" (highdicom warns with
    # the name), a birth date that is no date (highdicom refuses to copy it: pydicom echoes it).
    files = write_series(src, study, SeriesSpec("Arterial", 4), rows=64, cols=64,
                         patient_name="CANARYNAME CANARYGIVEN", patient_id="CANARYID77",
                         birth_date="CANARY-1980", accession="CANARYACC")
    ds = pydicom.dcmread(files[0])
    ds.PatientAge = "CANARYAGE"  # an invalid value that makes pydicom warn with the value in the message
    ds.save_as(files[0], enforce_file_format=True)
    for f in files:
        assert _store(node, pydicom.dcmread(f)) == 0x0000
    node.wait_for(lambda: "study_ready" in node.log_text(), timeout=60)
    node.wait_for(lambda: "job_failed" in node.log_text() or "job_done" in node.log_text(), timeout=120)
    _, metrics = node.http("/metrics")
    node.stop()
    assert "job_done" in node.log_text()  # a header the result objects cannot copy does not cost the results
    assert "CANARY" not in node.log_text()
    assert "CANARY" not in metrics
    spool_studies = node.data_dir / "spool" / "studies"
    results = node.data_dir / "results"
    leaked = []
    for p in node.data_dir.rglob("*"):
        in_objects = results in p.parents and p.suffix == ".dcm"  # the SR and SCs name the patient, by design
        if p.is_file() and spool_studies not in p.parents and not in_objects and b"CANARY" in p.read_bytes():
            leaked.append(p)
    assert not leaked
    # The spool does hold the data, and the result objects carry the patient's identity so the PACS
    # files them with the study: both are PHI, kept owner-only (the node runs with umask 077).
    assert any(b"CANARYID77" in p.read_bytes() for p in spool_studies.rglob("*.dcm"))
    (sr,) = results.rglob("sr.dcm")
    header = pydicom.dcmread(sr)
    assert header.PatientID == "CANARYID77" and not header.PatientBirthDate  # the non-date is left empty
    assert sr.stat().st_mode & 0o077 == 0 and results.stat().st_mode & 0o077 == 0


def test_promtool_accepts_the_metrics(node):
    assert _store(node, _instance("metrics")) == 0x0000
    status, text = node.http("/metrics")
    assert status == 200
    for name in ("liver_node_instances_received_total", "liver_node_associations_total", "liver_node_studies",
                 "liver_node_jobs", "liver_node_ingest_seconds_bucket", "liver_node_study_ready_seconds_bucket",
                 "process_start_time_seconds"):
        assert name in text
    res = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert node.http("/healthz")[0] == 200
