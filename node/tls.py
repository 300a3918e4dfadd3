"""DICOM TLS (PS3.15 B.12 secure transport, BCP 195): TLS 1.2 or newer, certificates from config.

pynetdicom runs the server-side handshake inside its accept loop, on a socket with no timeout, so
one silent client stalls every new association (reliability notes §4.1). ``DeferredHandshakeServer``
wraps the accepted socket without handshaking; the handshake then happens on the association's own
thread at its first read, bounded by the socket timeout set when the connection opens.
"""
from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass

from pynetdicom.transport import ThreadedAssociationServer


class TLSConfigError(Exception):
    """Certificate, key or CA cannot be loaded."""


@dataclass(frozen=True)
class TLSFiles:
    certificate: str
    private_key: str
    ca_file: str
    require_client_certificate: bool = True
    verify_hostname: bool = True  # outgoing: the destination's certificate must name the host we connect to


def _base(purpose: ssl.Purpose, files: TLSFiles) -> ssl.SSLContext:
    # Only ca_file is trusted: create_default_context would add the system store, every public CA.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT if purpose is ssl.Purpose.SERVER_AUTH else ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # BCP 195: forward-secret AEAD suites only on TLS 1.2 (TLS 1.3 suites are all acceptable).
    ctx.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20")
    try:
        ctx.load_cert_chain(files.certificate, files.private_key)
        ctx.load_verify_locations(files.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(f"cannot load TLS certificate, key or CA: {exc.__class__.__name__}: {exc}") from None
    return ctx


def server_context(files: TLSFiles) -> ssl.SSLContext:
    ctx = _base(ssl.Purpose.CLIENT_AUTH, files)
    ctx.verify_mode = ssl.CERT_REQUIRED if files.require_client_certificate else ssl.CERT_OPTIONAL
    return ctx


def client_context(files: TLSFiles) -> ssl.SSLContext:
    ctx = _base(ssl.Purpose.SERVER_AUTH, files)
    ctx.verify_mode = ssl.CERT_REQUIRED
    # The name check is what stops another certificate of the same CA from receiving results; a
    # site whose PACS certificates do not name their address can turn it off (tls.verify_hostname).
    ctx.check_hostname = files.verify_hostname
    return ctx


class DeferredHandshakeServer(ThreadedAssociationServer):
    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client_socket, address = self.socket.accept()
        if self.ssl_context:
            client_socket = self.ssl_context.wrap_socket(client_socket, server_side=True,
                                                         do_handshake_on_connect=False)
        return client_socket, address
