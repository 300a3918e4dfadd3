"""Logging set-up: key=value lines, and no patient data from third-party libraries.

pydicom's validation warnings echo attribute values (e.g. ``Invalid value for VR DA: '19CANARY'``)
and pynetdicom logs request identifiers by default; both could leak PHI into the journal, so the
first is silenced at the source and the second is turned off and filtered. Other libraries' warnings
reach the log through ``py.warnings`` (highdicom quotes a patient name it finds odd): any that quotes
a value keeps only where it was raised. A third-party record's traceback is cut to the exception type,
since its last line repeats the message, and so is an exception nothing caught, in any thread.
"""
from __future__ import annotations

import logging
import sys
import threading
import traceback
import warnings
from pathlib import Path
from types import TracebackType


def kv(**fields: object) -> str:
    """Render ``key=value`` pairs for a log message; values with spaces are quoted."""
    parts = []
    for key, value in fields.items():
        text = str(value)
        if not text or any(c.isspace() or c in '"=' for c in text):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


class ThirdPartyRedactor(logging.Filter):
    """Drop record arguments from pydicom/pynetdicom below WARNING and any record quoting a value.

    Our own loggers never format patient attributes; third-party messages cannot be trusted to.
    """

    _PREFIXES = ("pydicom", "pynetdicom", "highdicom", "apscheduler", "py.warnings")

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self._PREFIXES):
            return True
        if record.levelno < logging.WARNING:
            return False
        message = record.getMessage()
        if "'" in message or '"' in message or "value" in message.lower():
            where = message.split(": ", 1)[0] if record.name == "py.warnings" else record.name
            record.msg = f"{where}: message withheld (may contain attribute values)"
            record.args = ()
        if record.exc_info:
            record.msg = f"{record.msg} ({record.exc_info[0].__name__}; traceback withheld)"
            record.exc_info = record.exc_text = None
        return True


def safe_reason(exc: BaseException) -> str:
    """An exception as a recorded failure reason (logs, ``liver-node status``). A message raised inside a
    library may quote attribute values (pydicom: "Unable to convert '<birth date>'"): when it quotes
    anything it is replaced by the library's name; ours, and an OS error's number and text, are kept."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: [Errno {exc.errno}] {exc.strerror}"
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    package = str(tb.tb_frame.f_globals.get("__name__", "")).split(".")[0] if tb is not None else ""
    text = str(exc)
    if package in ("pipeline", "node") or not ("'" in text or '"' in text):
        return f"{type(exc).__name__}: {text}"
    return f"{type(exc).__name__} raised in {package or 'a library'}: message withheld (may quote attribute values)"


def quiet_third_party() -> None:
    """Stop pydicom and pynetdicom from echoing attribute values anywhere."""
    import pydicom.config
    from pynetdicom import _config as pnd_config

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?")
    warnings.filterwarnings("ignore", module=r"pynetdicom(\..*)?")
    pnd_config.LOG_REQUEST_IDENTIFIERS = False
    pnd_config.LOG_RESPONSE_IDENTIFIERS = False
    pnd_config.LOG_HANDLER_LEVEL = "none"
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("pydicom").setLevel(logging.WARNING)


def _where(exc: BaseException) -> str:
    """The innermost frame of a traceback as file:line (no message: that may quote a value)."""
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "unknown"


def log_thread_crash(args: threading.ExceptHookArgs) -> None:
    """An exception no thread caught, as one redacted line (Python's default prints the traceback,
    whose last line is the library's message, to stderr: the journal)."""
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "unknown"
    exc = args.exc_value or args.exc_type()
    logging.getLogger("node").error("%s", kv(event="thread_crashed", thread=name, error=safe_reason(exc),
                                             where=_where(exc)))


def log_main_crash(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    """The same for the main thread: the command ends with status 1 and one redacted line."""
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    logging.getLogger("node").critical("%s", kv(event="crashed", error=safe_reason(exc.with_traceback(tb)),
                                                where=_where(exc)))


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"))
    handler.addFilter(ThirdPartyRedactor())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)
    threading.excepthook = log_thread_crash
    sys.excepthook = log_main_crash
    quiet_third_party()
