"""What reaches the journal from third-party code: values quoted by libraries are withheld."""
from __future__ import annotations

import io
import logging
import threading
import warnings

import pytest
from pydicom.valuerep import DA

from node.logs import ThirdPartyRedactor, log_thread_crash, safe_reason
from pipeline.series import SeriesError, load_series


def _journal(emit) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    handler.addFilter(ThirdPartyRedactor())
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers[:] = [handler]
    try:
        emit()
    finally:
        root.handlers[:] = saved
    return stream.getvalue()


def test_a_library_exception_quoting_a_value_is_withheld_ours_and_os_errors_kept():
    with pytest.raises(ValueError) as raised:
        DA("CANARY-1980")  # pydicom: "Unable to convert 'CANARY-1980' to 'DA' object"
    reason = safe_reason(raised.value)
    assert "CANARY" not in reason and reason.startswith("ValueError raised in pydicom")
    with pytest.raises(SeriesError) as ours:
        load_series([])
    assert safe_reason(ours.value) == "SeriesError: no readable DICOM instance in the series"
    disk = OSError(28, "No space left on device", "/spool/CANARY.dcm")
    assert safe_reason(disk) == "OSError: [Errno 28] No space left on device"


def test_a_third_party_traceback_and_a_captured_warning_keep_no_value():
    def emit():
        try:
            raise ValueError("bad name 'CANARY^NAME'")
        except ValueError:
            logging.getLogger("pynetdicom.events").exception("handler failed")
        # a warning as logging.captureWarnings hands it on (called directly: pytest owns the warnings hook)
        text = warnings.formatwarning('The string "CANARY NAME" is unlikely to represent the intended person name',
                                      UserWarning, __file__, 42)
        logging.getLogger("py.warnings").warning("%s", text)

    text = _journal(emit)
    assert "CANARY" not in text
    assert "ValueError; traceback withheld" in text and "test_log_redaction.py" in text


def test_an_exception_no_thread_caught_is_one_redacted_line(monkeypatch):
    def crash():
        DA("CANARY-1980")

    def emit():
        monkeypatch.setattr(threading, "excepthook", log_thread_crash)
        t = threading.Thread(target=crash, name="job-7")
        t.start()
        t.join()

    text = _journal(emit)
    assert "CANARY" not in text and "Traceback" not in text
    assert "event=thread_crashed thread=job-7 error=" in text and "ValueError raised in pydicom" in text
    assert "where=valuerep.py:" in text


def test_a_crash_of_the_main_thread_is_one_redacted_line_and_status_1():
    import subprocess
    import sys

    script = ("from node.logs import setup_logging\nsetup_logging()\nfrom pydicom.valuerep import DA\n"
              "DA('CANARY-1980')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "CANARY" not in done.stderr and "Traceback" not in done.stderr
    assert "event=crashed error=" in done.stderr and "ValueError raised in pydicom" in done.stderr
    assert "where=valuerep.py:" in done.stderr
