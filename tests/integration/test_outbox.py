"""The outbox against a real DCMTK storescp: late destination, permanent refusal, no resend of done."""
from __future__ import annotations

import random
import subprocess
import time

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from node.config import Destination
from node.index import Index
from node.outbox import OutboxSender, RetryPolicy, classify_status, enqueue
from tests.support.ctdata import SeriesSpec, uid, write_series
from tests.support.orthanc import free_port


def _listening(port: int) -> bool:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


class StoreSCP:
    def __init__(self, folder, port: int, *flags: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.proc = subprocess.Popen(["storescp", "-aet", "PACS", "-od", str(folder), *flags, str(port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Ready when a probe association gets an answer (accepted, or rejected by --refuse).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if _listening(port):
                ae = AE(ae_title="PROBE")
                ae.add_requested_context(Verification)
                assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
                if assoc.is_established:
                    assoc.release()
                    return
                if assoc.is_rejected:
                    return
            time.sleep(0.05)
        raise RuntimeError("storescp did not start")

    def received(self) -> list[str]:
        return sorted(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in self.folder.iterdir())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def setup(tmp_path):
    index = Index(tmp_path / "index.sqlite")
    files = write_series(tmp_path / "results", uid("outbox"), SeriesSpec("SR stand-in", 3), rows=16, cols=16)
    yield index, files
    index.close()


def _states(index):
    return sorted(r[0] for r in index.query("SELECT state FROM outbox"))


def test_destination_down_then_up_delivers_once(setup, tmp_path):
    index, files = setup
    port = free_port()
    dest = Destination("PACS", "127.0.0.1", port)
    clock = Clock()
    results: list[str] = []
    delivered: list = []
    sender = OutboxSender(index, "LIVERNODE", RetryPolicy(5, 10.0, 60.0), on_result=results.append,
                          on_study_delivered=lambda u, r: delivered.append((u, r)), clock=clock, seed=1)
    assert enqueue(index, "1.2.3", 1, files, [dest], clock()) == 3
    assert enqueue(index, "1.2.3", 1, files, [dest], clock()) == 0  # idempotent
    assert sender.run_once() == 0  # nobody listening: retried later, not lost
    rows = index.query("SELECT attempts, next_attempt_at, last_error FROM outbox")
    assert all(r[0] == 1 and 5.0 <= r[1] - clock() <= 15.0 for r in rows)
    assert sender.run_once() == 0 and results.count("retry") == 3  # not due yet: no retry storm
    pacs = StoreSCP(tmp_path / "pacs", port)
    try:
        clock.t += 16
        assert sender.run_once() == 3
        assert _states(index) == ["done"] * 3
        assert delivered == [("1.2.3", 1)]
        clock.t += 1000
        assert sender.run_once() == 0  # done entries are never resent
        expected = sorted(str(pydicom.dcmread(f).SOPInstanceUID) for f in files)
        assert pacs.received() == expected
    finally:
        pacs.stop()


def test_permanent_refusal_goes_to_dead_letter_at_once(setup, tmp_path):
    index, files = setup
    # A pynetdicom SCP that knows only another calling AE: A-ASSOCIATE-RJ, rejected permanent.
    # (DCMTK's storescp --refuse closes the socket right after its RJ, and the requestor sometimes
    # sees the close first: that reads as a transient failure, which is retried as it should be.)
    ae = AE(ae_title="PACS")
    ae.add_supported_context(CTImageStorage)
    ae.require_calling_aet = ["SOMEONE"]
    pacs = ae.start_server(("127.0.0.1", 0), block=False)
    port = pacs.server_address[1]
    results: list[str] = []
    try:
        sender = OutboxSender(index, "LIVERNODE", RetryPolicy(5, 1.0, 10.0), on_result=results.append)
        enqueue(index, "1.2.3", 1, files, [Destination("PACS", "127.0.0.1", port)], time.time())
        sender.run_once()
        assert _states(index) == ["dead"] * 3
        assert results == ["dead_letter"] * 3
        assert "rejected (permanent)" in index.scalar("SELECT last_error FROM outbox")
        assert sender.run_once() == 0 and len(results) == 3
        # once the PACS is fixed, an administrator gives the dead letters another try
        from node.cli import main

        assert main(["requeue-dead", "--data-dir", str(tmp_path), "--to", f"PACS@127.0.0.1:{port}"]) == 0
        assert _states(index) == ["pending"] * 3
        assert index.scalar("SELECT MAX(attempts) FROM outbox") == 0
    finally:
        pacs.shutdown()


def test_a_corrupt_result_file_is_dead_lettered_and_the_rows_behind_it_still_go(setup, tmp_path):
    index, files = setup
    port = free_port()
    results: list[str] = []
    sender = OutboxSender(index, "LIVERNODE", RetryPolicy(5, 1.0, 10.0), on_result=results.append)
    enqueue(index, "1.2.3", 1, files, [Destination("PACS", "127.0.0.1", port)], time.time())
    files[0].write_bytes(b"not a DICOM file")  # damaged after it was queued
    pacs = StoreSCP(tmp_path / "pacs", port)
    try:
        assert sender.run_once() == 2
        assert _states(index) == ["dead", "done", "done"]
        assert index.scalar("SELECT last_error FROM outbox WHERE state='dead'") == "cannot read: InvalidDicomError"
        assert len(pacs.received()) == 2
    finally:
        pacs.stop()


def test_status_classification_and_backoff():
    assert classify_status(0x0000).ok and classify_status(0xB000).ok
    assert classify_status(0x0122).permanent and classify_status(0xA900).permanent
    assert classify_status(0xC211).permanent
    assert classify_status(0x0111).ok  # a re-send after a crash that the PACS already holds
    assert not classify_status(0xA700).permanent and not classify_status(None).permanent
    policy, rng = RetryPolicy(8, 5.0, 60.0), random.Random(0)
    delays = [policy.delay(a, rng) for a in range(1, 8)]
    assert 2.5 <= delays[0] <= 7.5 and all(d <= 90.0 for d in delays)
    assert delays[4] > delays[0]


def test_an_ipv6_destination_round_trips_and_does_not_block_the_others(setup, tmp_path):
    """An IPv6 destination was stored without brackets and no longer parsed, which stopped every
    delivery round before the other destinations' turn."""
    index, files = setup
    ipv6 = Destination.parse("PACS6@[::1]:9")
    assert str(ipv6) == "PACS6@[::1]:9" and Destination.parse(str(ipv6)) == ipv6
    assert Destination.parse("PACS6@::1:9") == ipv6  # as rows were stored before
    port = free_port()
    pacs = StoreSCP(tmp_path / "pacs", port)
    try:
        # the IPv6 one first, as it sorts; nothing listens on [::1]:9, so its rows wait for a retry
        enqueue(index, "1.2.3", 1, files, [ipv6, Destination("PACS", "127.0.0.1", port)], time.time())
        with index.transaction() as c:  # and one row as an older version stored it
            c.execute("UPDATE outbox SET destination='PACS6@::1:9' WHERE id=(SELECT MIN(id) FROM outbox)")
        with index.transaction() as c:  # a destination nothing can parse any more fails alone, permanently
            c.execute("INSERT INTO outbox (study_uid, revision, sop_instance_uid, sop_class_uid, path, destination,"
                      " state, next_attempt_at, created) VALUES ('1.2.3', 1, '1.2', '1.2', 'x', 'BROKEN', 'pending',"
                      " 0, 0)")
        assert OutboxSender(index, "LIVERNODE", RetryPolicy(5, 10.0, 60.0)).run_once() == 3
        assert len(pacs.received()) == 3
        rows = {r["destination"]: r["state"] for r in index.query("SELECT destination, state FROM outbox")}
        assert rows["BROKEN"] == "dead" and rows["PACS6@[::1]:9"] == "pending"
    finally:
        pacs.stop()


def test_a_stop_during_a_round_ends_it_after_the_current_instance(setup, tmp_path):
    """Shutdown: the round in flight records what it delivered and leaves the rest pending, untouched."""
    index, files = setup
    port = free_port()
    pacs = StoreSCP(tmp_path / "pacs", port)
    try:
        sender = OutboxSender(index, "LIVERNODE", RetryPolicy(5, 10.0, 60.0))
        sender.on_result = lambda result: sender.stop()  # the signal lands during the first C-STORE
        enqueue(index, "1.2.3", 1, files, [Destination("PACS", "127.0.0.1", port)], time.time())
        assert sender.run_once() == 1
        assert _states(index) == ["done", "pending", "pending"]
        assert index.scalar("SELECT MAX(attempts) FROM outbox WHERE state='pending'") == 0
        assert sender.run_once() == 0 and len(pacs.received()) == 1
    finally:
        pacs.stop()


def test_the_send_command_accounts_for_every_file_when_the_association_drops(tmp_path, monkeypatch):
    import socket

    from pynetdicom import AllStoragePresentationContexts, evt

    from node import scu

    stores = []

    def drop_on_second(event):
        stores.append(1)
        if len(stores) == 2:
            event.assoc.dul.socket.socket.shutdown(socket.SHUT_RDWR)
        return 0x0000

    make_ae = scu._ae

    def quick_ae(aet):  # the dropped C-STORE waits out the DIMSE timeout: 3 s, not 60
        ae = make_ae(aet)
        ae.dimse_timeout = 3
        return ae

    monkeypatch.setattr(scu, "_ae", quick_ae)
    ae = AE(ae_title="PACS")
    ae.supported_contexts = AllStoragePresentationContexts
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, drop_on_second)])
    files = write_series(tmp_path / "in", uid("scu-drop"), SeriesSpec("AP", 6), rows=16, cols=16)
    try:
        report = scu.send([tmp_path / "in"], Destination("PACS", "127.0.0.1", server.server_address[1]), "LIVERNODE")
    finally:
        server.shutdown()
    assert report.sent + len(report.failed) + len(report.skipped) == len(files)
    assert report.sent == 1 and any(reason == "not sent: association lost" for _, reason in report.failed)


def test_the_send_command_fails_when_nothing_was_sent(tmp_path, capsys):
    from node.cli import main

    assert main(["send", str(tmp_path / "mistyped"), "--to", "PACS@127.0.0.1:9"]) == 1
    assert "sent=0" in capsys.readouterr().out
