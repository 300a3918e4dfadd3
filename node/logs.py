"""Logging set-up: key=value lines, and no patient data from third-party libraries.

pydicom's validation warnings echo attribute values (e.g. ``Invalid value for VR DA: '19CANARY'``)
and pynetdicom logs request identifiers by default; both could leak PHI into the journal, so the
first is silenced at the source and the second is turned off and filtered.
"""
from __future__ import annotations

import logging
import sys
import warnings


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

    _PREFIXES = ("pydicom", "pynetdicom")

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self._PREFIXES):
            return True
        if record.levelno < logging.WARNING:
            return False
        message = record.getMessage()
        if "'" in message or '"' in message or "value" in message.lower():
            record.msg = f"{record.name}: message withheld (may contain attribute values)"
            record.args = ()
        return True


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


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"))
    handler.addFilter(ThirdPartyRedactor())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)
    quiet_third_party()
