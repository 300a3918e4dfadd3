"""Header values the phase rules read, from classic CT and from Enhanced CT alike.

Enhanced CT (one multi-frame instance per series) keeps several of them elsewhere: the agent in the
Contrast/Bolus Agent Sequence (coded), the bolus start in that item's Contrast Administration Profile
Sequence, the acquisition time in Acquisition DateTime and each frame's Frame Acquisition DateTime,
the orientation in the Plane Orientation functional group. Read at the top level only, they are
absent, and such a series could be labelled from its description alone.
"""
from __future__ import annotations

import re

from .phases import tm_before

_DT_TIME = re.compile(r"\d{8}(\d{2,6}(?:\.\d{1,6})?)")  # YYYYMMDD then the TM part (offset dropped)


def _text(value) -> str | None:
    return str(value) if value not in (None, "") else None


def _first(ds, keyword: str):
    seq = ds.get(keyword)
    return seq[0] if seq else None


def functional_group(ds, name: str, frame_index: int = 0):
    """The item of macro ``name`` that applies to a frame of an Enhanced CT instance: in the frame's own
    per-frame functional group, else in the shared one; None where neither has it."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    groups = [per_frame[frame_index]] if frame_index < len(per_frame) else []
    groups.append(_first(ds, "SharedFunctionalGroupsSequence"))
    return next((item for group in groups if group is not None and (item := _first(group, name)) is not None), None)


def dt_time(value) -> str | None:
    """The TM part of a DT value (date and UTC offset dropped); None if it is not a date-time."""
    m = _DT_TIME.match(str(value or ""))
    return m.group(1) if m else None


def contrast_agent(ds) -> str | None:
    if (text := _text(ds.get("ContrastBolusAgent"))) is not None:
        return text
    item = _first(ds, "ContrastBolusAgentSequence")
    if item is None:
        return None
    return _text(item.get("CodeMeaning")) or _text(item.get("CodeValue")) or "contrast agent (coded)"


def bolus_start_time(ds) -> str | None:
    if (text := _text(ds.get("ContrastBolusStartTime"))) is not None:
        return text
    agent = _first(ds, "ContrastBolusAgentSequence")
    profile = _first(agent, "ContrastAdministrationProfileSequence") if agent is not None else None
    return _text(profile.get("ContrastBolusStartTime")) if profile is not None else None


def acquisition_time(ds) -> str | None:
    """Acquisition Time; for Enhanced CT the time of Acquisition DateTime, else of its earliest frame."""
    if (text := _text(ds.get("AcquisitionTime"))) is not None:
        return text
    if (text := dt_time(ds.get("AcquisitionDateTime"))) is not None:
        return text
    earliest = None
    for frame in ds.get("PerFrameFunctionalGroupsSequence") or []:
        content = _first(frame, "FrameContentSequence")
        t = dt_time(content.get("FrameAcquisitionDateTime")) if content is not None else None
        if t is not None and (earliest is None or tm_before(t, earliest)):
            earliest = t
    return earliest


def orientation(ds):
    """Image Orientation (Patient) as stored: top level, else the first frame's plane orientation group."""
    if ds.get("ImageOrientationPatient") is not None:
        return ds.ImageOrientationPatient
    plane = functional_group(ds, "PlaneOrientationSequence")
    return plane.get("ImageOrientationPatient") if plane is not None else None
