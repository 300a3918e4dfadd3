"""systemd readiness protocol: READY=1 after the port is bound, WATCHDOG=1 pings, STOPPING=1 on SIGTERM."""
from __future__ import annotations

import socket

from pynetdicom import AE
from pynetdicom.sop_class import Verification


def test_ready_watchdog_stopping(node_factory, tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(30)
    node = node_factory("--no-worker", start=False)
    node.env.update(NOTIFY_SOCKET=path, WATCHDOG_USEC="1000000")
    node.start()
    messages = []

    def until(field: str) -> list[str]:
        while not any(field in m for m in messages):
            messages.append(sock.recv(4096).decode())
        return messages

    until("READY=1")
    ready = next(m for m in messages if "READY=1" in m)
    assert "STATUS=" in ready and "jobs_queued=" in ready
    # READY means the DICOM port answers.
    ae = AE(ae_title="PROBE")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="LIVERNODE")
    assert assoc.is_established
    assoc.release()
    until("WATCHDOG=1")
    node.proc.send_signal(15)
    until("STOPPING=1")
    assert node.proc.wait(60) == 0
    order = [next(i for i, m in enumerate(messages) if f in m) for f in ("READY=1", "WATCHDOG=1", "STOPPING=1")]
    assert order == sorted(order)
    sock.close()
