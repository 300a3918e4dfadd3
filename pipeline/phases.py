"""Label each series of a contrast CT study NC / AP / PVP / DELAYED / OTHER from header fields alone.

Pure logic: no pydicom, no I/O, no clock. ``label_series`` works study-wide because ordering needs
every series. Per series, the first step that decides wins:

0. ignore: modality not in ``modalities``, an ImageType value in ``ignore_image_types``
   (LOCALIZER, SCREEN SAVE), or a description matching ``ignore_patterns`` (scout, topogram,
   dose report, bolus tracking, VNC/iodine maps) -> OTHER, source "none".
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

Patterns are Python regexes, matched case-insensitively and word-aware: a match may not start
right after a letter or digit nor end right before a letter (so "AP" never matches "CAP", "PV"
never matches "PVC", but "Art1.25" is still arterial). Underscores and runs of whitespace in the
description become single spaces first. Reasons name the pattern that matched, never the
description text.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, Mapping, Sequence

log = logging.getLogger(__name__)

DAY_S = 86400.0


class Phase(str, Enum):
    NC = "NC"
    AP = "AP"
    PVP = "PVP"
    DELAYED = "DELAYED"
    OTHER = "OTHER"


ENHANCED = frozenset({Phase.AP, Phase.PVP, Phase.DELAYED})


class PhaseError(Exception):
    """Base class for phase-labelling errors."""


class PhaseRulesError(PhaseError):
    """An invalid phase rule; ``key`` names the offending setting, ``message`` says what is wrong."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


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
    source: str  # "description" | "timing" | "ordering" | "contrast" | "none": the step that decided
    reason: str


_SEP = r"[\s/-]*"
DEFAULT_NC_PATTERNS: tuple[str, ...] = (
    r"non[\s-]*contrast", r"non[\s-]*con", r"no[\s-]*contrast", r"pre[\s-]*contrast", r"(?:un|non)[\s-]*enhanced",
    r"without(?:\s+contrast)?", r"(?<!w[/&+])w\s*/\s*o", r"(?<!w[/&+])wo", r"plain", r"nati(?:ve|v)", r"pre",
    r"ncct", r"nc", r"c-(?=\s|$)",
)
DEFAULT_AP_PATTERNS: tuple[str, ...] = (
    r"early[\s-]*arterial", r"late[\s-]*arterial", r"arterial", r"art", r"hap", r"eap", r"lap",
    r"ap(?![\s/-]*(?:view|lat|proj|pa(?![a-z])))", r"angio", r"cta",
)
DEFAULT_PVP_PATTERNS: tuple[str, ...] = (
    r"portal[\s-]*venous", r"porto[\s-]*venous", r"portal", r"pvp", r"pv", r"venous", r"ven",
)
DEFAULT_DELAYED_PATTERNS: tuple[str, ...] = (
    r"delayed", r"delay", r"dly", r"equilibrium", r"equil", r"eq", r"late(?![\s-]*(?:art|ap|hap|portal|pv|ven))",
    r"excretory", r"(?<![.\d])(?:[2-9]|[1-9]\d)[\s-]*min(?:ute)?s?",
)
DEFAULT_IGNORE_PATTERNS: tuple[str, ...] = (
    r"locali[sz]er", r"scout", r"topogram", r"surview", r"scanogram", r"pilot", r"dose[\s-]*(?:report|info)",
    r"patient[\s-]*protocol", r"screen[\s-]*save", r"(?:pre)?monitor(?:ing)?", r"bolus[\s-]*track(?:ing|er)?",
    r"smart[\s-]*prep", r"care[\s-]*bolus", r"sure[\s-]*start", r"test[\s-]*bolus", r"tracker", r"vnc",
    r"virtual[\s-]*(?:non[\s-]*contrast|unenhanced|native)", r"iodine",
)
DEFAULT_NO_AGENT_VALUES: tuple[str, ...] = (
    r"none", r"no", r"nil", r"n/?a", r"0", r"-+", r"no[\s-]*contrast", r"without", r"not[\s-]*(?:applied|given)",
)

_FAMILY_KEYS = (
    (Phase.NC, "nc_patterns"), (Phase.AP, "ap_patterns"), (Phase.PVP, "pvp_patterns"),
    (Phase.DELAYED, "delayed_patterns"),
)
_PATTERN_KEYS = frozenset({"nc_patterns", "ap_patterns", "pvp_patterns", "delayed_patterns", "ignore_patterns",
                           "no_agent_values"})
_WORD_KEYS = frozenset({"modalities", "ignore_image_types"})
_WINDOW_KEYS = frozenset({"ap_window_s", "pvp_window_s", "ap_pvp_gap_s", "pvp_delayed_gap_s"})
_SCALAR_KEYS = frozenset({"delayed_after_s", "max_timing_s", "same_acquisition_s"})


def _word_regex(pattern: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![a-z0-9])(?:{pattern})(?![a-z])", re.IGNORECASE)


@dataclass(frozen=True)
class PhaseRules:
    """Phase-labelling rules; every value is validated on construction (``PhaseRulesError``)."""

    nc_patterns: tuple[str, ...] = DEFAULT_NC_PATTERNS
    ap_patterns: tuple[str, ...] = DEFAULT_AP_PATTERNS
    pvp_patterns: tuple[str, ...] = DEFAULT_PVP_PATTERNS
    delayed_patterns: tuple[str, ...] = DEFAULT_DELAYED_PATTERNS
    ignore_patterns: tuple[str, ...] = DEFAULT_IGNORE_PATTERNS
    ignore_image_types: tuple[str, ...] = ("LOCALIZER", "SCREEN SAVE")
    no_agent_values: tuple[str, ...] = DEFAULT_NO_AGENT_VALUES  # ContrastBolusAgent values meaning "none"
    modalities: tuple[str, ...] = ("CT",)
    ap_window_s: tuple[float, float] = (15.0, 45.0)  # seconds after bolus start, inclusive
    pvp_window_s: tuple[float, float] = (50.0, 100.0)
    delayed_after_s: float = 150.0
    max_timing_s: float = 3600.0  # |acquisition - bolus start| beyond this: timing unreliable
    same_acquisition_s: float = 10.0  # start times this close belong to one acquisition (recons)
    ap_pvp_gap_s: tuple[float, float] = (20.0, 90.0)  # ordering: AP start -> PVP start
    pvp_delayed_gap_s: tuple[float, float] = (60.0, 900.0)  # ordering: PVP start -> DELAYED start
    _compiled: dict[str, tuple[tuple[str, re.Pattern[str]], ...]] = field(
        init=False, repr=False, compare=False, hash=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        compiled: dict[str, tuple[tuple[str, re.Pattern[str]], ...]] = {}
        for key in sorted(_PATTERN_KEYS):
            items = []
            for i, pattern in enumerate(getattr(self, key)):
                if not isinstance(pattern, str) or not pattern.strip():
                    raise PhaseRulesError(f"{key}[{i}]", "must be a non-empty string")
                try:
                    rx = (re.compile(pattern, re.IGNORECASE) if key == "no_agent_values" else _word_regex(pattern))
                except re.error as exc:
                    raise PhaseRulesError(f"{key}[{i}]", f"invalid regular expression: {exc}") from None
                if rx.search("") is not None:
                    raise PhaseRulesError(f"{key}[{i}]", "pattern matches the empty string")
                items.append((pattern, rx))
            compiled[key] = tuple(items)
        for key in sorted(_WORD_KEYS):
            for i, word in enumerate(getattr(self, key)):
                if not isinstance(word, str) or not word.strip():
                    raise PhaseRulesError(f"{key}[{i}]", "must be a non-empty string")
        for key in sorted(_WINDOW_KEYS):
            lo, hi = getattr(self, key)
            if not (_number(lo) and _number(hi) and 0 <= lo < hi):
                raise PhaseRulesError(key, "must be [low, high] seconds with 0 <= low < high")
        for key in sorted(_SCALAR_KEYS):
            value = getattr(self, key)
            if not (_number(value) and value > 0):
                raise PhaseRulesError(key, "must be a positive number of seconds")
        if self.ap_window_s[1] >= self.pvp_window_s[0]:
            raise PhaseRulesError("pvp_window_s", "must start after ap_window_s ends")
        if self.pvp_window_s[1] >= self.delayed_after_s:
            raise PhaseRulesError("delayed_after_s", "must be later than the end of pvp_window_s")
        if self.max_timing_s <= self.delayed_after_s:
            raise PhaseRulesError("max_timing_s", "must be larger than delayed_after_s")
        if self.same_acquisition_s >= self.ap_pvp_gap_s[0]:
            raise PhaseRulesError("same_acquisition_s", "must be smaller than the low end of ap_pvp_gap_s")
        object.__setattr__(self, "_compiled", compiled)

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any]) -> PhaseRules:
        """Build rules from a config table; absent keys keep their defaults, given lists replace them."""
        if not isinstance(d, Mapping):
            raise PhaseRulesError("", "must be a table of settings")
        known = {f.name for f in fields(cls) if f.init}
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            if key not in known:
                raise PhaseRulesError(str(key), f"unknown key; expected one of {', '.join(sorted(known))}")
            if key in _PATTERN_KEYS or key in _WORD_KEYS:
                if isinstance(value, str) or not isinstance(value, (list, tuple)):
                    raise PhaseRulesError(key, "must be a list of strings")
                for i, item in enumerate(value):
                    if not isinstance(item, str):
                        raise PhaseRulesError(f"{key}[{i}]", "must be a string")
                kwargs[key] = tuple(v.strip().upper() for v in value) if key in _WORD_KEYS else tuple(value)
            elif key in _WINDOW_KEYS:
                if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(_number(v) for v in value):
                    raise PhaseRulesError(key, "must be a list of two numbers [low, high]")
                kwargs[key] = (float(value[0]), float(value[1]))
            else:
                if not _number(value):
                    raise PhaseRulesError(key, "must be a number")
                kwargs[key] = float(value)
        return cls(**kwargs)

    def patterns(self, key: str) -> tuple[tuple[str, re.Pattern[str]], ...]:
        return self._compiled[key]


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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
            labels[uid] = PhaseLabel(Phase.OTHER, "none", ignored)
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
