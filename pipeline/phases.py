"""Label each series of a contrast CT study NC / AP / PVP / DELAYED / OTHER from header fields alone.

Pure logic: no pydicom, no I/O, no clock. ``label_series`` works study-wide because ordering needs
every series. Per series, the first step that decides wins:

0. ignore: modality not in ``modalities``, an ImageType value in ``ignore_image_types``
   (LOCALIZER, SCREEN SAVE), or a description matching ``ignore_patterns`` (scout, topogram,
   dose report, bolus tracking, VNC/iodine maps) -> OTHER, source "ignored" (never analysed).
1. description: the SeriesDescription is matched against the NC/AP/PVP/DELAYED pattern families.
   One family -> that phase, unless bolus timing falls in a *different* phase window (conflict ->
   OTHER). Several families -> conflict, resolved only when timing names one of them.
   ProtocolName is not used: it is usually study-wide ("LIVER 3 PHASE") and says nothing per series.
2. timing: AcquisitionTime minus ContrastBolusStartTime (midnight wrap handled): AP/PVP windows,
   DELAYED from ``delayed_after_s``, NC when acquired before the bolus start; between windows ->
   OTHER (ambiguous). Offsets beyond ``max_timing_s`` are treated as unreliable (no timing).
3. contrast: no ContrastBolusAgent (or a "none" value) and acquired before the first
   contrast-enhanced acquisition of the study -> NC; with no enhanced series at all -> OTHER.
4. ordering: enhanced series (agent present, or labelled AP/PVP/DELAYED, or acquired after one)
   are grouped into acquisitions (start times within ``same_acquisition_s``). Two acquisitions
   ``ap_pvp_gap_s`` apart -> AP, PVP; three with fitting gaps -> AP, PVP, DELAYED, provided the
   order agrees with the series already labelled. A series in the same acquisition as a labelled
   series takes its label. Anything else -> OTHER with the reason.

Patterns and their matching rules, timing windows and their validation live in ``pipeline.phase_rules``.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from .phase_rules import (
    DEFAULT_AP_PATTERNS,
    DEFAULT_DELAYED_PATTERNS,
    DEFAULT_IGNORE_PATTERNS,
    DEFAULT_NC_PATTERNS,
    DEFAULT_NO_AGENT_VALUES,
    ENHANCED,
    _FAMILY_KEYS,
    Phase,
    PhaseError,
    PhaseRules,
    PhaseRulesError,
)

__all__ = [
    "DAY_S", "DEFAULT_AP_PATTERNS", "DEFAULT_DELAYED_PATTERNS", "DEFAULT_IGNORE_PATTERNS", "DEFAULT_NC_PATTERNS",
    "DEFAULT_NO_AGENT_VALUES", "ENHANCED", "Phase", "PhaseError", "PhaseLabel", "PhaseRules", "PhaseRulesError",
    "SeriesHeader", "label_series", "parse_tm",
]

log = logging.getLogger(__name__)

DAY_S = 86400.0


@dataclass(frozen=True)
class SeriesHeader:
    series_instance_uid: str
    modality: str
    series_description: str | None
    series_number: int | None
    image_type: tuple[str, ...]
    contrast_agent: str | None  # ContrastBolusAgent
    contrast_route: str | None
    contrast_start_time: str | None  # DICOM TM
    acquisition_time: str | None  # DICOM TM, earliest in the series
    series_time: str | None
    protocol_name: str | None
    image_orientation: tuple[float, ...] | None
    num_instances: int


@dataclass(frozen=True)
class PhaseLabel:
    phase: Phase
    source: str  # "description" | "timing" | "ordering" | "contrast" | "none" | IGNORED: the step that decided
    reason: str


IGNORED = "ignored"  # PhaseLabel.source of a series that is not a diagnostic CT series (step 0)

_TM_RE = re.compile(r"(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?")


def parse_tm(value: str | None) -> float | None:
    """DICOM TM ("HHMMSS.frac", "HHMM", "HH", or legacy "HH:MM:SS") -> seconds of the day; None if unusable."""
    if value is None:
        return None
    m = _TM_RE.fullmatch(value.strip().replace(":", ""))
    if m is None:
        return None
    hh, mm, ss = int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0)
    if hh > 23 or mm > 59 or ss > 60:
        return None
    return hh * 3600 + mm * 60 + ss + (float("0." + m.group(4)) if m.group(4) else 0.0)


def tm_before(a: str | None, b: str | None) -> bool:
    """Whether acquisition time ``a`` comes before ``b`` in one study: on the 24-hour circle, ``a`` lies less
    than 12 h before ``b``, so a series scanned from 23:59:40 to 00:00:04 starts at 23:59:40. A usable time
    comes before an unusable one."""
    ta, tb = parse_tm(a), parse_tm(b)
    if ta is None or tb is None:
        return ta is not None
    return 0.0 < (tb - ta) % 86400.0 < 43200.0


def _normalise(text: str | None) -> str:
    return re.sub(r"[\s_]+", " ", text or "").strip()


def _ignore_reason(h: SeriesHeader, rules: PhaseRules) -> str | None:
    modality = (h.modality or "").strip().upper()
    if modality not in rules.modalities:
        return f"modality {modality or '(empty)'!r} is not one of {', '.join(rules.modalities)}"
    image_types = {v.strip().upper() for v in h.image_type}
    for value in rules.ignore_image_types:
        if value in image_types:
            return f"ImageType contains {value}: not a diagnostic series"
    text = _normalise(h.series_description)
    for pattern, rx in rules.patterns("ignore_patterns"):
        if rx.search(text):
            return f"description matches ignore pattern '{pattern}': not a diagnostic series"
    return None


def _description_matches(h: SeriesHeader, rules: PhaseRules) -> list[tuple[Phase, str]]:
    text = _normalise(h.series_description)
    found = []
    for phase, key in _FAMILY_KEYS:
        for pattern, rx in rules.patterns(key):
            if rx.search(text):
                found.append((phase, pattern))
                break
    return found


@dataclass(frozen=True)
class _Timing:
    kind: str  # "label" | "ambiguous" | "unavailable"
    phase: Phase | None
    note: str


def _timing(h: SeriesHeader, rules: PhaseRules) -> _Timing:
    if not (h.contrast_start_time or "").strip():
        return _Timing("unavailable", None, "no contrast bolus start time")
    start = parse_tm(h.contrast_start_time)
    if start is None:
        return _Timing("unavailable", None, "unreadable contrast bolus start time")
    acq = parse_tm(h.acquisition_time)
    if acq is None:
        return _Timing("unavailable", None, "no readable acquisition time")
    delta = (acq - start) % DAY_S
    if delta > DAY_S / 2:
        delta -= DAY_S  # acquired before the bolus start (possibly across midnight)
    if abs(delta) > rules.max_timing_s:
        return _Timing("unavailable", None, f"bolus start {delta:.0f} s from acquisition, beyond "
                                            f"{rules.max_timing_s:g} s: timing not trusted")
    (a_lo, a_hi), (p_lo, p_hi), d_lo = rules.ap_window_s, rules.pvp_window_s, rules.delayed_after_s
    if delta < 0:
        return _Timing("label", Phase.NC, f"acquired {-delta:.0f} s before contrast bolus start")
    after = f"acquired {delta:.0f} s after contrast bolus start"
    if a_lo <= delta <= a_hi:
        return _Timing("label", Phase.AP, f"{after} (AP window {a_lo:g}-{a_hi:g} s)")
    if p_lo <= delta <= p_hi:
        return _Timing("label", Phase.PVP, f"{after} (PVP window {p_lo:g}-{p_hi:g} s)")
    if delta >= d_lo:
        return _Timing("label", Phase.DELAYED, f"{after} (DELAYED from {d_lo:g} s)")
    if delta < a_lo:
        where = f"before the AP window ({a_lo:g}-{a_hi:g} s)"
    elif delta < p_lo:
        where = f"between the AP ({a_lo:g}-{a_hi:g} s) and PVP ({p_lo:g}-{p_hi:g} s) windows"
    else:
        where = f"between the PVP window ({p_lo:g}-{p_hi:g} s) and DELAYED ({d_lo:g} s)"
    return _Timing("ambiguous", None, f"{after}, {where}")


def _direct_label(h: SeriesHeader, rules: PhaseRules, t: _Timing) -> PhaseLabel | None:
    """Steps 1 and 2: description and bolus timing. None when both are silent."""
    matches = _description_matches(h, rules)
    if len(matches) == 1:
        phase, pattern = matches[0]
        said = f"description matches {phase.value} pattern '{pattern}'"
        if t.phase is not None and t.phase is not phase:
            return PhaseLabel(Phase.OTHER, "description", f"conflict: {said} but timing says {t.phase.value}: {t.note}")
        return PhaseLabel(phase, "description", said + (f"; timing agrees: {t.note}" if t.kind == "label" else ""))
    if matches:
        said = ", ".join(f"{p.value} '{pat}'" for p, pat in matches)
        if t.phase is not None and t.phase in {p for p, _ in matches}:
            return PhaseLabel(t.phase, "timing", f"description matches several phases ({said}); timing decides: {t.note}")
        return PhaseLabel(Phase.OTHER, "description",
                          f"conflict: description matches several phases ({said}) and timing does not resolve it ({t.note})")
    if t.phase is not None:
        return PhaseLabel(t.phase, "timing", f"no phase keyword in description; {t.note}")
    if t.kind == "ambiguous":
        return PhaseLabel(Phase.OTHER, "timing", f"no phase keyword in description; ambiguous timing: {t.note}")
    return None


def _agent_present(h: SeriesHeader, rules: PhaseRules) -> bool:
    agent = (h.contrast_agent or "").strip()
    return bool(agent) and not any(rx.fullmatch(agent) for _, rx in rules.patterns("no_agent_values"))


def _timeline(times: Mapping[str, float]) -> dict[str, float]:
    """Seconds since the study's first acquisition; the day wraps at the largest circular gap."""
    if not times:
        return {}
    vals = sorted(set(times.values()))
    n = len(vals)
    gaps = [((vals[(i + 1) % n] - vals[i]) % DAY_S) if n > 1 else 0.0 for i in range(n)]
    start = vals[(gaps.index(max(gaps)) + 1) % n]
    return {uid: (t - start) % DAY_S for uid, t in times.items()}


@dataclass
class _Acquisition:
    start: float
    members: list[str]


def _acquisitions(rel: Mapping[str, float], uids: Sequence[str], tolerance: float) -> list[_Acquisition]:
    groups: list[_Acquisition] = []
    last = -math.inf
    for uid in sorted(uids, key=lambda u: (rel[u], u)):
        if groups and rel[uid] - last <= tolerance:
            groups[-1].members.append(uid)
        else:
            groups.append(_Acquisition(rel[uid], [uid]))
        last = rel[uid]
    return groups


def _order_proposal(groups: list[_Acquisition], rules: PhaseRules) -> tuple[list[Phase] | None, str]:
    n = len(groups)
    if n == 1:
        return None, "single contrast acquisition, nothing to order"
    if n not in (2, 3):
        return None, f"{n} contrast acquisitions; ordering labels only 2 or 3"
    (g1_lo, g1_hi), (g2_lo, g2_hi) = rules.ap_pvp_gap_s, rules.pvp_delayed_gap_s
    gap1 = groups[1].start - groups[0].start
    if not g1_lo <= gap1 <= g1_hi:
        return None, f"{n} contrast acquisitions; first gap {gap1:.0f} s is outside the AP->PVP range {g1_lo:g}-{g1_hi:g} s"
    if n == 2:
        return [Phase.AP, Phase.PVP], f"2 contrast acquisitions {gap1:.0f} s apart (AP->PVP range {g1_lo:g}-{g1_hi:g} s)"
    gap2 = groups[2].start - groups[1].start
    if not g2_lo <= gap2 <= g2_hi:
        return None, (f"3 contrast acquisitions; second gap {gap2:.0f} s is outside the PVP->DELAYED range "
                      f"{g2_lo:g}-{g2_hi:g} s")
    return [Phase.AP, Phase.PVP, Phase.DELAYED], (
        f"3 contrast acquisitions with gaps {gap1:.0f} s and {gap2:.0f} s (AP->PVP {g1_lo:g}-{g1_hi:g} s, "
        f"PVP->DELAYED {g2_lo:g}-{g2_hi:g} s)")


def label_series(headers: Sequence[SeriesHeader], rules: PhaseRules) -> dict[str, PhaseLabel]:
    """Label every series of one study; the result has one entry per input series UID."""
    labels: dict[str, PhaseLabel] = {}
    undecided: dict[str, _Timing] = {}
    agent: dict[str, bool] = {}
    times: dict[str, float] = {}
    for h in headers:
        uid = h.series_instance_uid
        if uid in labels or uid in undecided:
            raise PhaseError(f"duplicate series {uid} in one study")
        ignored = _ignore_reason(h, rules)
        if ignored is not None:
            labels[uid] = PhaseLabel(Phase.OTHER, IGNORED, ignored)
            continue
        t = _timing(h, rules)
        direct = _direct_label(h, rules, t)
        if direct is not None:
            labels[uid] = direct
        else:
            undecided[uid] = t
        agent[uid] = _agent_present(h, rules)
        acq = parse_tm(h.acquisition_time)
        if acq is not None:
            times[uid] = acq
    if undecided:
        labels.update(_contrast_and_ordering(undecided, labels, agent, _timeline(times), rules))
    ordered = {h.series_instance_uid: labels[h.series_instance_uid] for h in headers}
    for uid, lab in ordered.items():
        log.debug("phase_labelled series_uid=%s phase=%s source=%s", uid, lab.phase.value, lab.source)
    return ordered


def _contrast_and_ordering(undecided: Mapping[str, _Timing], decided: Mapping[str, PhaseLabel],
                           agent: Mapping[str, bool], rel: Mapping[str, float],
                           rules: PhaseRules) -> dict[str, PhaseLabel]:
    """Steps 3 and 4 for the series that description and timing left silent."""
    out: dict[str, PhaseLabel] = {}
    silent = {uid: f"no phase keyword in description, {t.note}" for uid, t in undecided.items()}
    anchors = [u for u, lab in decided.items() if lab.phase in ENHANCED and u in rel]
    enhanced_known = anchors + [u for u in undecided if agent[u] and u in rel]
    first_enhanced = min((rel[u] for u in enhanced_known), default=None)
    candidates: list[str] = []
    for uid in undecided:
        if uid not in rel:
            out[uid] = PhaseLabel(Phase.OTHER, "none", f"{silent[uid]}, no acquisition time to order by")
        elif first_enhanced is None:
            out[uid] = PhaseLabel(Phase.OTHER, "none",
                                  f"{silent[uid]}, no contrast agent and no contrast-enhanced series in the study")
        elif not agent[uid] and rel[uid] < first_enhanced - rules.same_acquisition_s:
            out[uid] = PhaseLabel(Phase.NC, "contrast", f"{silent[uid]}; no contrast agent and acquired "
                                  f"{first_enhanced - rel[uid]:.0f} s before the first contrast-enhanced acquisition")
        else:
            candidates.append(uid)  # agent present, or acquired with/after an enhanced series
    if not candidates:
        return out
    groups = _acquisitions(rel, anchors + candidates, rules.same_acquisition_s)
    proposal, why = _order_proposal(groups, rules)
    known = [{decided[u].phase for u in g.members if u in decided} for g in groups]
    if proposal is not None and any(k - {p} for k, p in zip(known, proposal)):
        proposal, why = None, f"{why}, but that order conflicts with series labelled by description/timing"
    for i, group in enumerate(groups):
        for uid in group.members:
            if uid in decided:
                continue
            if proposal is not None:
                out[uid] = PhaseLabel(proposal[i], "ordering",
                                      f"{silent[uid]}; contrast acquisition {i + 1} of {len(groups)}: {why}")
            elif len(known[i]) == 1:
                (phase,) = known[i]
                out[uid] = PhaseLabel(phase, "ordering", f"{silent[uid]}; same acquisition (within "
                                      f"{rules.same_acquisition_s:g} s) as a series labelled {phase.value}")
            elif known[i]:
                out[uid] = PhaseLabel(Phase.OTHER, "ordering",
                                      f"{silent[uid]}; same acquisition as series with different labels")
            else:
                out[uid] = PhaseLabel(Phase.OTHER, "ordering", f"{silent[uid]}; {why}")
    return out
