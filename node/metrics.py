"""Prometheus metrics and the /metrics, /healthz, /readyz HTTP endpoint.

Label values come from small fixed sets (results, states), never from a UID or patient data.
State gauges (studies, jobs) are read from the index at scrape time, so they are right across
processes and restarts without bookkeeping.
"""
from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, Info, PlatformCollector,
                               ProcessCollector, generate_latest)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from pipeline.hierarchy import ALL_CLASSES as CASE_CLASSES

from .index import Index

log = logging.getLogger(__name__)

INGEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STUDY_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600)
ANALYSIS_OUTCOMES = ("lesion", "no_lesion", "not_analysed", "failed")
PHASE_MODES = {"AP+PVP": "ap_pvp", "AP only": "ap_only", "PVP only": "pvp_only", "unknown phase": "unknown_phase"}
FINISHED = "state IN ('done', 'failed')"  # superseded jobs carry a finish time too, but no analysis


class IndexStateCollector:
    """Exports state counts and spool use, read from the index and the filesystem at scrape time."""

    def __init__(self, index: Index, spool_root: Path | None) -> None:
        self.index = index
        self.spool_root = spool_root

    def collect(self):  # noqa: ANN201 - prometheus collector protocol
        for table, name, doc in [
            ("studies", "liver_node_studies", "Studies in the index by state"),
            ("jobs", "liver_node_jobs", "Analysis jobs by state"),
            ("outbox", "liver_node_outbox", "Result deliveries by state"),
        ]:
            family = GaugeMetricFamily(name, doc, labels=["state"])
            for state, count in self.index.counts_by_state(table).items():
                family.add_metric([state], count)
            yield family
        waiting = self.index.scalar("SELECT COUNT(*) FROM jobs WHERE state='queued' AND not_before > ?", (time.time(),))
        yield GaugeMetricFamily("liver_node_jobs_retry_waiting",
                                "Queued jobs waiting out a transient failure (disk full, out of memory) before a retry",
                                value=float(waiting or 0))
        size = self.index.scalar("SELECT COALESCE(SUM(size), 0) FROM instances") or 0
        yield GaugeMetricFamily("liver_node_spool_bytes", "Bytes of received instances in the spool", value=float(size))
        if self.spool_root is not None:
            usage = shutil.disk_usage(self.spool_root)
            yield GaugeMetricFamily("liver_node_spool_free_ratio", "Free fraction of the spool filesystem",
                                    value=usage.free / usage.total if usage.total else 0.0)


class NodeMetrics:
    """All metrics of the receiving process, on a registry of its own (no global state)."""

    def __init__(self, index: Index | None = None, spool_root: Path | None = None) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.instances = Counter(
            "liver_node_instances_received", "C-STORE requests by outcome", ["result"], registry=self.registry
        )
        self.associations = Counter(
            "liver_node_associations", "Association requests by outcome", ["result"], registry=self.registry
        )
        self.ingest_seconds = Histogram(
            "liver_node_ingest_seconds", "Time to validate, write, fsync and index one instance",
            buckets=INGEST_BUCKETS, registry=self.registry,
        )
        self.study_ready_seconds = Histogram(
            "liver_node_study_ready_seconds", "First instance received to study ready",
            buckets=STUDY_BUCKETS, registry=self.registry,
        )
        self.results_sent = Counter(
            "liver_node_results_sent", "Result instance deliveries by outcome", ["result"], registry=self.registry
        )
        self.study_e2e_seconds = Histogram(
            "liver_node_study_e2e_seconds", "Last instance received to last result acknowledged by the destination",
            buckets=STUDY_BUCKETS, registry=self.registry,
        )
        self.ready = Gauge("liver_node_ready", "1 when /readyz passes (spool writable, worker alive with models)",
                           registry=self.registry)
        self.stage_seconds = Histogram(
            "liver_node_pipeline_stage_seconds", "Duration of each pipeline stage per study", ["stage"],
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600), registry=self.registry,
        )
        self.model_info = Info("liver_node_model", "Models loaded by the inference worker", ["name"],
                               registry=self.registry)
        self.retention_removed = Counter("liver_node_retention_removed", "What the retention job deleted",
                                         ["kind"], registry=self.registry)
        # What the analyses found, for drift monitoring: compare a day's shares with the last weeks'
        # in PromQL (conf/alerts.yml). Fixed label sets, created at zero so every rate exists.
        self.analyses = Counter("liver_node_analyses", "Finished study analyses by outcome", ["outcome"],
                                registry=self.registry)
        self.case_class = Counter("liver_node_case_class", "Case decisions of analyses with a lesion, by class",
                                  ["class"], registry=self.registry)
        self.phase_mode = Counter("liver_node_phase_mode", "Analysed studies by the contrast phases used",
                                  ["mode"], registry=self.registry)
        self.lesions_reported = Counter("liver_node_lesions_reported", "Lesions reported by finished analyses",
                                        registry=self.registry)
        for outcome in ANALYSIS_OUTCOMES:
            self.analyses.labels(outcome)
        for cls in CASE_CLASSES:
            self.case_class.labels(cls)
        for mode in PHASE_MODES.values():
            self.phase_mode.labels(mode)
        self._index = index
        # Jobs finished before this process started were counted by an earlier one: a restart must not
        # replay them. By finish time, not id: a retried or recovered older job can finish after a newer one.
        self._last_finished_seen = float(index.scalar(
            f"SELECT COALESCE(MAX(finished), 0) FROM jobs WHERE {FINISHED}")) if index is not None else 0.0
        if index is not None:
            self.registry.register(IndexStateCollector(index, spool_root))

    def collect_worker(self) -> None:
        """Carry the worker process's figures (stage timings, findings, models) into this registry."""
        if self._index is None:
            return
        for finished, state, timings, findings in self._index.query(
                f"SELECT finished, state, timings, findings FROM jobs WHERE finished > ? AND {FINISHED}"
                " ORDER BY finished", (self._last_finished_seen,)):
            for stage, seconds in json.loads(timings or "{}").items():
                self.stage_seconds.labels(stage).observe(float(seconds))
            self._count_findings(state, json.loads(findings) if findings else None)
            self._last_finished_seen = finished
        row = self._index.query("SELECT models FROM workers WHERE models IS NOT NULL ORDER BY heartbeat DESC LIMIT 1")
        if row:
            for model in json.loads(row[0][0]):
                self.model_info.labels(model["name"]).info({"version": model["version"],
                                                            "sha256": model["sha256"][:16]})

    def _count_findings(self, state: str, findings: dict | None) -> None:
        if findings is None:  # the analysis itself failed (no result), or a job from before findings were kept
            if state == "failed":
                self.analyses.labels("failed").inc()
            return
        if findings.get("status") != "ok":
            self.analyses.labels("not_analysed").inc()
            return
        lesions = int(findings.get("lesions") or 0)
        self.analyses.labels("lesion" if lesions else "no_lesion").inc()
        self.lesions_reported.inc(lesions)
        self.phase_mode.labels(PHASE_MODES.get(findings.get("phase_mode"), "other")).inc()
        if lesions and findings.get("case_class") in CASE_CLASSES:
            self.case_class.labels(findings["case_class"]).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


Probe = Callable[[], tuple[bool, str]]


class MetricsServer:
    """Serves /metrics, /healthz (process alive) and /readyz (every readiness probe passes)."""

    def __init__(self, metrics: NodeMetrics, bind: str, port: int, readiness: list[Probe]) -> None:
        self.metrics = metrics
        self.readiness = readiness
        handler = self._handler_class()
        self.httpd = ThreadingHTTPServer((bind, port), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="metrics-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def check_ready(self) -> tuple[bool, list[str]]:
        problems = []
        for probe in self.readiness:
            ok, detail = probe()
            if not ok:
                problems.append(detail)
        self.metrics.ready.set(0 if problems else 1)
        return not problems, problems

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    server.check_ready()  # keeps liver_node_ready current for scrapes
                    self._reply(200, server.metrics.render(), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._reply(200, b"ok\n")
                elif path == "/readyz":
                    ok, problems = server.check_ready()
                    body = b"ready\n" if ok else ("not ready: " + "; ".join(problems) + "\n").encode()
                    self._reply(200 if ok else 503, body)
                else:
                    self._reply(404, b"not found\n")

            def _reply(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server API
                pass  # scrapes every few seconds would flood the journal

        return Handler
