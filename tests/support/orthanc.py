"""Debian's Orthanc as a stand-in PACS on loopback ports, with its REST API for checks."""
from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Mapping

ORTHANC_BIN = "/usr/sbin/Orthanc"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OrthancPACS:
    """Orthanc in ``workdir`` on free loopback ports; ``start`` returns once its REST API answers.

    ``config`` entries are merged over the built-in configuration (e.g. ``{"SyncStorageArea": True}``);
    ``env`` replaces the server process's environment (default: inherited).
    """

    def __init__(self, workdir: Path, modalities: dict[str, tuple[str, str, int]] | None = None,
                 aet: str = "ORTHANC", *, config: Mapping[str, Any] | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.workdir = workdir
        self.aet = aet
        self.modalities = modalities or {}
        self.extra_config = dict(config or {})
        self.env = dict(env) if env is not None else None
        self.port = self.http_port = 0
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> "OrthancPACS":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.http_port = free_port()
        while self.http_port == self.port:
            self.http_port = free_port()
        config = {
            "Name": "liver-node-test", "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"), "DicomServerEnabled": True, "DicomAet": self.aet,
            "DicomPort": self.port, "DicomAlwaysAllowStore": True, "DicomCheckCalledAet": False,
            "DicomCheckModalityHost": False, "HttpServerEnabled": True, "HttpPort": self.http_port,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "Plugins": [], "SaveJobs": False,
            "DicomModalities": {k: list(v) for k, v in self.modalities.items()},
            **self.extra_config,
        }
        cfg = self.workdir / "orthanc.json"
        cfg.write_text(json.dumps(config))
        self.proc = subprocess.Popen([ORTHANC_BIN, str(cfg)], stdout=(self.workdir / "orthanc.log").open("w"),
                                     stderr=subprocess.STDOUT, cwd=str(self.workdir), start_new_session=True,
                                     env=self.env)
        deadline = time.monotonic() + timeout
        while self.get("/system") is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("Orthanc did not start: " + (self.workdir / "orthanc.log").read_text()[-2000:])
            time.sleep(0.1)
        return self

    def get(self, path: str):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as r:
                return json.loads(r.read())
        except (urllib.error.URLError, ConnectionError, OSError):
            return None

    def post(self, path: str, body) -> object:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data, method="POST")
        with urllib.request.urlopen(req, timeout=300) as r:
            return json.loads(r.read())

    def upload(self, files: list[Path]) -> None:
        for f in files:
            self.post("/instances", f.read_bytes())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
