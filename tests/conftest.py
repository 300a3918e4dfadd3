import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# ultralytics must never reach for the network, in tests as in production.
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "0")
os.environ.setdefault("YOLO_CONFIG_DIR", str(REPO / ".yolo"))

from tests.support.nodeproc import NodeProcess  # noqa: E402


@pytest.fixture
def node_factory(tmp_path):
    """Start liver-node subprocesses on ephemeral ports; all are stopped at the end of the test."""
    started: list[NodeProcess] = []

    def make(*extra: str, config: str | None = None, name: str = "node", start: bool = True) -> NodeProcess:
        node = NodeProcess(tmp_path / name, *extra, config=config)
        started.append(node)
        return node.start() if start else node

    yield make
    for node in started:
        try:
            node.stop(timeout=30)
        except Exception:
            node.kill()
