"""DICOM TLS on the listener and for result deliveries, with DCMTK's TLS-enabled echoscu/storescu."""
from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import time

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from node.config import Destination
from node.index import Index
from node.outbox import OutboxSender, enqueue
from node.tls import TLSFiles, client_context
from tests.support.ctdata import SeriesSpec, uid, write_series


def _openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ca(cwd, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
             "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=cwd)


def _leaf(cwd, name: str, ca: str, san: str | None = None) -> None:
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=cwd)
    ext = []
    if san:
        (cwd / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        ext = ["-extfile", f"{name}.ext"]
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-days", "2", "-out", f"{name}.pem", *ext, cwd=cwd)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    _ca(d, "ca")
    _ca(d, "rogue-ca")
    _leaf(d, "node", "ca")
    _leaf(d, "modality", "ca")
    _leaf(d, "intruder", "rogue-ca")
    _leaf(d, "pacs", "ca", san="IP:127.0.0.1")  # a PACS certificate naming the address results go to
    return d


def _tls_node(node_factory, pki, require_client: bool = True, extra: str = ""):
    config = (f'[tls]\nenabled = true\ncertificate = "{pki}/node.pem"\nprivate_key = "{pki}/node.key"\n'
              f'ca_file = "{pki}/ca.pem"\nrequire_client_certificate = {str(require_client).lower()}\n'
              f"[node]\nsocket_timeout = 5.0\n{extra}")
    return node_factory("--no-worker", config=config)


def _echoscu(port: int, pki, key: str = "modality", ca: str = "ca") -> subprocess.CompletedProcess:
    return subprocess.run(["echoscu", "+tls", f"{pki}/{key}.key", f"{pki}/{key}.pem", "+cf", f"{pki}/{ca}.pem",
                           "-aec", "LIVERNODE", "127.0.0.1", str(port)], capture_output=True, text=True, timeout=60)


def test_tls_listener_accepts_trusted_peers_only(node_factory, pki, tmp_path):
    node = _tls_node(node_factory, pki)
    assert _echoscu(node.dicom_port, pki).returncode == 0
    files = write_series(tmp_path / "s", uid("tls"), SeriesSpec("AP", 2), rows=16, cols=16)
    store = subprocess.run(["storescu", "+tls", f"{pki}/modality.key", f"{pki}/modality.pem", "+cf", f"{pki}/ca.pem",
                            "-aec", "LIVERNODE", "127.0.0.1", str(node.dicom_port), *map(str, files)],
                           capture_output=True, text=True, timeout=60)
    assert store.returncode == 0, store.stderr
    assert _echoscu(node.dicom_port, pki, key="intruder").returncode != 0  # certificate from another CA
    assert _echoscu(node.dicom_port, pki, ca="rogue-ca").returncode != 0  # client does not trust the node
    plain = subprocess.run(["echoscu", "-aec", "LIVERNODE", "127.0.0.1", str(node.dicom_port)],
                           capture_output=True, text=True, timeout=60)
    assert plain.returncode != 0  # TLS-only: plain TCP gets no association
    # No client certificate at all.
    ctx = ssl.create_default_context(cafile=f"{pki}/ca.pem")
    ctx.check_hostname = False
    ae = AE(ae_title="NOCERT")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="LIVERNODE", tls_args=(ctx, None))
    assert not assoc.is_established


def test_old_tls_versions_refused_by_the_server(node_factory, pki):
    node = _tls_node(node_factory, pki, require_client=False)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    with socket.create_connection(("127.0.0.1", node.dicom_port), timeout=10) as raw:
        with pytest.raises(ssl.SSLError) as err:
            ctx.wrap_socket(raw).do_handshake()
    # Refused by the server's minimum version, not by this client's own OpenSSL policy.
    assert "protocol version" in str(err.value).lower() or "unsupported protocol" in str(err.value).lower()


def test_silent_clients_do_not_block_tls_associations(node_factory, pki):
    node = _tls_node(node_factory, pki)
    silent = [socket.create_connection(("127.0.0.1", node.dicom_port)) for _ in range(3)]
    started = time.monotonic()
    assert _echoscu(node.dicom_port, pki).returncode == 0
    assert time.monotonic() - started < 4  # well under the 5 s socket timeout the silent ones hold
    for s in silent:
        s.close()


@contextlib.contextmanager
def _tls_pacs(pki, cert: str, tmp_path):
    """A DCMTK storescp serving TLS with ``cert`` (of the test CA), and an outbox index: (port, index)."""
    from tests.support.orthanc import free_port

    port = free_port()
    (tmp_path / "pacs").mkdir()
    pacs = subprocess.Popen(["storescp", "+tls", f"{pki}/{cert}.key", f"{pki}/{cert}.pem", "+cf",
                             f"{pki}/ca.pem", "-aet", "PACS", "-od", str(tmp_path / "pacs"), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    index = Index(tmp_path / "index.sqlite")
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # listening
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield port, index
    finally:
        pacs.terminate()
        pacs.wait(10)
        index.close()


def _deliver(index, files, port, tls) -> list[str]:
    sender = OutboxSender(index, "LIVERNODE", tls=tls)
    enqueue(index, "1.2.3", 1, files, [Destination("PACS", "127.0.0.1", port)], time.time())
    for _ in range(3):
        if sender.run_once() == len(files):
            break
        with index.transaction() as c:  # make the retry due now
            c.execute("UPDATE outbox SET next_attempt_at=0 WHERE state='pending'")
    return sorted(r[0] for r in index.query("SELECT state FROM outbox"))


def test_outbox_delivers_over_tls_to_a_certificate_naming_the_destination(pki, tmp_path):
    with _tls_pacs(pki, "pacs", tmp_path) as (port, index):
        files = write_series(tmp_path / "r", uid("tls-out"), SeriesSpec("x", 2), rows=16, cols=16)
        tls = client_context(TLSFiles(f"{pki}/node.pem", f"{pki}/node.key", f"{pki}/ca.pem"))
        assert _deliver(index, files, port, tls) == ["done", "done"]
        assert len(list((tmp_path / "pacs").iterdir())) == 2


def test_outbox_withholds_results_from_a_certificate_for_another_name(pki, tmp_path):
    """Same CA, but the certificate names someone else: no PHI goes there unless the site turns the name
    check off (tls.verify_hostname = false) for PACS certificates that do not name their address."""
    with _tls_pacs(pki, "modality", tmp_path) as (port, index):
        files = write_series(tmp_path / "r", uid("tls-name"), SeriesSpec("x", 2), rows=16, cols=16)
        tls = client_context(TLSFiles(f"{pki}/node.pem", f"{pki}/node.key", f"{pki}/ca.pem"))
        assert _deliver(index, files, port, tls) == ["pending", "pending"]
        assert not any((tmp_path / "pacs").iterdir())
        relaxed = client_context(TLSFiles(f"{pki}/node.pem", f"{pki}/node.key", f"{pki}/ca.pem", verify_hostname=False))
        assert _deliver(index, files, port, relaxed) == ["done", "done"]


def test_outgoing_tls_trusts_the_configured_ca_only(pki):
    ctx = client_context(TLSFiles(f"{pki}/node.pem", f"{pki}/node.key", f"{pki}/ca.pem"))
    assert ctx.cert_store_stats()["x509_ca"] == 1 and ctx.check_hostname  # not the system's public CAs
