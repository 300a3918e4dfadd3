"""Typed, validated settings loaded from one TOML file, with command-line overrides.

Every section is a frozen dataclass; a key the dataclass does not name, or a value of the wrong
type or range, raises ConfigError naming ``section.key`` so start-up stops with a clear message.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
import socket
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from pipeline.phases import Phase, PhaseRules, PhaseRulesError


REPO_ROOT = Path(__file__).resolve().parents[1]


class ConfigError(Exception):
    """A configuration problem; ``key`` is the dotted name of the offending setting."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE VR: no backslash, no control chars
# An IPv6 host in brackets; unbracketed as well, as outbox rows stored it before (the last ":" is the port's)
_DEST_RE = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[^:@]+|\[[0-9a-fA-F:]+\]|[0-9a-fA-F]*:[0-9a-fA-F:]+)"
                      r":(?P<port>\d{1,5})$")


def validate_ae_title(key: str, value: str) -> str:
    if not _AE_RE.match(value) or not value.strip():
        raise ConfigError(key, "must be 1-16 printable characters, no backslash, not all blanks")
    return value.strip()


@dataclass(frozen=True)
class Destination:
    """A remote DICOM application entity, written AE@HOST:PORT."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, key: str = "destination") -> "Destination":
        m = _DEST_RE.match(text.strip())
        if not m:
            raise ConfigError(key, f"expected AE@HOST:PORT, got {text!r}")
        port = int(m["port"])
        if not 1 <= port <= 65535:
            raise ConfigError(key, f"port {port} out of range 1-65535")
        return cls(validate_ae_title(key, m["ae"]), m["host"].strip("[]"), port)

    def __str__(self) -> str:  # parse() reads it back: an IPv6 host keeps its brackets
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"


@dataclass(frozen=True)
class NodeSettings:
    ae_title: str = "LIVERNODE"
    bind: str = "0.0.0.0"
    port: int = 11112  # 0 = pick a free port
    data_dir: str = "var"
    max_associations: int = 10
    # Offer a large PDU: pynetdicom is CPU-bound per PDU, so fewer, larger PDUs raise throughput.
    max_pdu: int = 131072
    # Largest PDU a peer may send us before we close the connection (guards memory, see reliability notes).
    max_pdu_accepted: int = 4 * 1024 * 1024
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0
    # A peer that stalls inside a PDU frees its slot after this many seconds.
    socket_timeout: float = 30.0
    min_free_mb: int = 1024
    extra_sop_classes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class AccessSettings:
    allowed_calling_aets: list[str] = field(default_factory=list)  # empty: any calling AE
    allowed_hosts: list[str] = field(default_factory=list)  # IPs or CIDR networks; empty: any
    check_called_aet: bool = True


@dataclass(frozen=True)
class StudySettings:
    quiet_period: float = 60.0
    max_wait: float = 1800.0
    required_phases: list[str] = field(default_factory=lambda: ["AP", "PVP"])


@dataclass(frozen=True)
class MetricsSettings:
    bind: str = "127.0.0.1"
    port: int = 9108  # 0 = pick a free port


@dataclass(frozen=True)
class WorkerSettings:
    enabled: bool = True
    poll_interval: float = 1.0
    max_attempts: int = 3
    shutdown_timeout: float = 30.0
    job_timeout: float = 1800.0  # a study still running after this is failed and the worker restarted
    retry_delay: float = 60.0  # a transient failure (disk full, out of memory) is retried after this, doubling


@dataclass(frozen=True)
class PipelineSettings:
    weights_dir: str = "weights"  # relative paths resolve against the installed package's repository root
    device: str = ""  # "" picks CUDA when present, else CPU; or "cpu", "cuda", "cuda:1"
    unknown_phase: str = "run"  # no AP/PVP identified: "run" on an unlabelled CT series (marked), or "refuse"


@dataclass(frozen=True)
class ResultSettings:
    destinations: list[str] = field(default_factory=list)  # AE@HOST:PORT each, for every study
    # Calling AE title of the sender -> AE@HOST:PORT its results go back to.
    return_to: dict[str, str] = field(default_factory=dict)
    max_attempts: int = 20  # about 3 h of retries at the default delays, then dead-lettered
    retry_base_delay: float = 5.0  # seconds; doubles per attempt, with +-50% jitter
    retry_max_delay: float = 900.0
    send_interval: float = 2.0  # how often the outbox looks for due entries


@dataclass(frozen=True)
class TLSSettings:
    enabled: bool = False  # TLS-only listener on node.port (DICOM's usual TLS port is 2762)
    certificate: str = ""  # PEM certificate chain of this node
    private_key: str = ""
    ca_file: str = ""  # PEM CA bundle trusted for peers (clients and result destinations)
    require_client_certificate: bool = True
    outgoing: bool = False  # use TLS, with the same certificate and CA, for result deliveries
    verify_hostname: bool = True  # outgoing: the PACS certificate must name the destination's host (DNS or IP)


@dataclass(frozen=True)
class RetentionSettings:
    completed_days: float = 7.0  # received instances and results of analysed studies are deleted after this
    failed_days: float = 30.0  # ...and of studies whose analysis failed (kept longer for investigation)
    interval: float = 3600.0  # seconds between retention runs


@dataclass(frozen=True)
class Settings:
    node: NodeSettings = field(default_factory=NodeSettings)
    access: AccessSettings = field(default_factory=AccessSettings)
    studies: StudySettings = field(default_factory=StudySettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    results: ResultSettings = field(default_factory=ResultSettings)
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    tls: TLSSettings = field(default_factory=TLSSettings)
    phases: PhaseRules = field(default_factory=PhaseRules)

    @property
    def data_dir(self) -> Path:
        return Path(self.node.data_dir).resolve()

    @property
    def tls_files(self):  # noqa: ANN201 - node.tls.TLSFiles, imported lazily
        from .tls import TLSFiles

        t = self.tls
        return TLSFiles(t.certificate, t.private_key, t.ca_file, t.require_client_certificate, t.verify_hostname)

    @property
    def weights_dir(self) -> Path:
        path = Path(self.pipeline.weights_dir)
        return path if path.is_absolute() else (REPO_ROOT / path).resolve()

    @property
    def destinations(self) -> list[Destination]:
        return [Destination.parse(d, "results.destinations") for d in self.results.destinations]

    def destinations_for(self, calling_aet: str | None) -> list[Destination]:
        """Every configured destination, plus the return address of the AE that sent the study."""
        dests = list(self.destinations)
        back = self.results.return_to.get((calling_aet or "").strip())
        if back:
            dests.append(Destination.parse(back, "results.return_to"))
        return list(dict.fromkeys(dests))


_SECTIONS: dict[str, type] = {
    "node": NodeSettings,
    "access": AccessSettings,
    "studies": StudySettings,
    "metrics": MetricsSettings,
    "worker": WorkerSettings,
    "results": ResultSettings,
    "pipeline": PipelineSettings,
    "retention": RetentionSettings,
    "tls": TLSSettings,
}


def _coerce(key: str, annotation: Any, value: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin is dict:
        _, value_type = typing.get_args(annotation)
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"expected a table, got {type(value).__name__}")
        return {str(k): _coerce(f"{key}.{k}", value_type, v) for k, v in value.items()}
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise ConfigError(key, f"expected a list, got {type(value).__name__}")
        return [_coerce(f"{key}[{i}]", item_type, v) for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(key, "unsupported setting type")  # no optional settings so far
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}")
        return value
    raise ConfigError(key, "unsupported setting type")


def _build_section(name: str, cls: type, raw: Mapping[str, Any]) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(name, "expected a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{name}.{key}", "unknown setting")
    values = {k: _coerce(f"{name}.{k}", hints[k], v) for k, v in raw.items()}
    return cls(**values)


def _check_ranges(s: Settings) -> None:
    def port(key: str, v: int) -> None:
        if not 0 <= v <= 65535:
            raise ConfigError(key, f"port {v} out of range 0-65535")

    def positive(key: str, v: float) -> None:
        if not math.isfinite(v) or v <= 0:  # TOML and float() both accept nan and inf
            raise ConfigError(key, f"must be a finite number > 0, got {v}")

    def ae_title(key: str, value: str) -> None:
        # Peers' titles are compared stripped: one stored with spaces would never match.
        if validate_ae_title(key, value) != value:
            raise ConfigError(key, f"no leading or trailing spaces, got {value!r}")

    def bind(key: str, host: str) -> None:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            try:
                socket.getaddrinfo(host, None)
            except (socket.gaierror, UnicodeError):
                raise ConfigError(key, f"not an IP address or resolvable host name: {host!r}") from None

    port("node.port", s.node.port)
    port("metrics.port", s.metrics.port)
    bind("node.bind", s.node.bind)
    bind("metrics.bind", s.metrics.bind)
    ae_title("node.ae_title", s.node.ae_title)
    for i, ae in enumerate(s.access.allowed_calling_aets):
        ae_title(f"access.allowed_calling_aets[{i}]", ae)
    for ae in s.results.return_to:
        ae_title(f"results.return_to.{ae}", ae)
    for i, host in enumerate(s.access.allowed_hosts):
        try:
            ipaddress.ip_network(host, strict=False)
        except ValueError:
            raise ConfigError(f"access.allowed_hosts[{i}]", f"not an IP address or network: {host!r}") from None
    for key, v in [
        ("node.max_associations", s.node.max_associations),
        ("node.acse_timeout", s.node.acse_timeout),
        ("node.dimse_timeout", s.node.dimse_timeout),
        ("node.network_timeout", s.node.network_timeout),
        ("node.socket_timeout", s.node.socket_timeout),
        ("studies.quiet_period", s.studies.quiet_period),
        ("studies.max_wait", s.studies.max_wait),
        ("worker.poll_interval", s.worker.poll_interval),
        ("worker.max_attempts", s.worker.max_attempts),
        ("worker.shutdown_timeout", s.worker.shutdown_timeout),
        ("worker.job_timeout", s.worker.job_timeout),
        ("worker.retry_delay", s.worker.retry_delay),
        ("retention.completed_days", s.retention.completed_days),
        ("retention.failed_days", s.retention.failed_days),
        ("retention.interval", s.retention.interval),
    ]:
        positive(key, v)
    if not 4096 <= s.node.max_pdu <= s.node.max_pdu_accepted:
        raise ConfigError("node.max_pdu", "must be >= 4096 and <= node.max_pdu_accepted")
    if s.node.min_free_mb < 0:
        raise ConfigError("node.min_free_mb", "must be >= 0")
    if not s.node.data_dir:
        raise ConfigError("node.data_dir", "must not be empty")
    for i, phase in enumerate(s.studies.required_phases):
        if phase not in Phase.__members__ or phase == "OTHER":
            raise ConfigError(f"studies.required_phases[{i}]", f"unknown or unrequirable phase {phase!r}")
    for i, uid in enumerate(s.node.extra_sop_classes):
        if not re.fullmatch(r"[0-9]+(\.[0-9]+)*", uid) or len(uid) > 64:
            raise ConfigError(f"node.extra_sop_classes[{i}]", f"not a UID: {uid!r}")
    if s.pipeline.unknown_phase not in ("run", "refuse"):
        raise ConfigError("pipeline.unknown_phase", "must be 'run' or 'refuse'")
    if s.pipeline.device and not re.fullmatch(r"cpu|cuda(:\d+)?", s.pipeline.device):
        raise ConfigError("pipeline.device", f"expected '', 'cpu' or 'cuda[:N]', got {s.pipeline.device!r}")
    if s.tls.enabled or s.tls.outgoing:
        for key in ("certificate", "private_key", "ca_file"):
            value = getattr(s.tls, key)
            if not value or not Path(value).is_file():
                raise ConfigError(f"tls.{key}", f"file not found: {value!r}")
    for d in s.results.destinations:
        Destination.parse(d, "results.destinations")
    for ae, d in s.results.return_to.items():
        Destination.parse(d, f"results.return_to.{ae}")
    for key, v in [("results.max_attempts", s.results.max_attempts), ("results.retry_base_delay",
                   s.results.retry_base_delay), ("results.retry_max_delay", s.results.retry_max_delay),
                   ("results.send_interval", s.results.send_interval)]:
        positive(key, v)


def settings_from_mapping(raw: Mapping[str, Any]) -> Settings:
    sections: dict[str, Any] = {}
    for name, value in raw.items():
        if name == "phases":
            try:
                sections["phases"] = PhaseRules.from_mapping(value)
            except PhaseRulesError as exc:
                raise ConfigError(f"phases.{exc.key}", exc.message) from None
            continue
        if name not in _SECTIONS:
            raise ConfigError(name, "unknown section")
        sections[name] = _build_section(name, _SECTIONS[name], value)
    settings = Settings(**sections)
    _check_ranges(settings)
    return settings


def load_settings(path: Path | None, overrides: Mapping[str, Any] | None = None) -> Settings:
    """Read ``path`` (or the built-in defaults when None) and apply ``{"section.key": value}`` overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("--config", f"file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("--config", f"invalid TOML: {exc}") from None
    for dotted, value in (overrides or {}).items():
        section, key = dotted.split(".", 1)
        raw.setdefault(section, {})
        raw[section] = {**raw[section], key: value}
    return settings_from_mapping(raw)
