"""Run ``liver-node serve`` as a subprocess on ephemeral ports, the way an operator would."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"listening dicom=(\d+) metrics=(\d+)")


class NodeProcess:
    def __init__(self, data_dir: Path, *extra: str, config: str | None = None, env: dict | None = None) -> None:
        self.data_dir = data_dir
        self.log_path = data_dir.parent / f"{data_dir.name}-node.log"
        self.config_path = None
        args = [sys.executable, "-m", "node.cli", "serve", "--port", "0", "--metrics-port", "0",
                "--data-dir", str(data_dir), *extra]
        if config is not None:
            self.config_path = data_dir.parent / f"{data_dir.name}-node.toml"
            self.config_path.write_text(config)
            args += ["--config", str(self.config_path)]
        self.args = args
        self.env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.dicom_port = self.metrics_port = 0
        self.lines: list[str] = []

    def start(self, timeout: float = 60.0) -> "NodeProcess":
        self.lines = []
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=self.env, cwd=str(REPO), start_new_session=True)
        found = threading.Event()

        def pump() -> None:
            with open(self.log_path, "a") as log:
                for line in self.proc.stdout:
                    log.write(line)
                    log.flush()
                    self.lines.append(line)
                    m = LISTENING.search(line)
                    if m and not found.is_set():
                        self.dicom_port, self.metrics_port = int(m[1]), int(m[2])
                        found.set()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not found.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("node did not start:\n" + "".join(self.lines))
        return self

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # The worker is our child: kill the whole process group, as a crash of the unit would.
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def wait_for(self, predicate, timeout: float = 60.0, interval: float = 0.1):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        raise TimeoutError("condition not met within %.0f s" % timeout)
