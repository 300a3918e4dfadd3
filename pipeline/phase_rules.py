"""Phase-labelling rules: the pattern families, header filters and timing windows behind ``pipeline.phases``.

``PhaseRules`` holds every setting with a working default; ``PhaseRules.from_mapping`` builds it from the
``[phases]`` config table (absent keys keep their defaults, given lists replace them). All values are
validated on construction: patterns must compile and not match the empty string, word lists must be
non-empty strings, windows must be ``[low, high]`` seconds with ``0 <= low < high``, and the windows must be
in order (AP before PVP before DELAYED, ``max_timing_s`` beyond ``delayed_after_s``, same-acquisition
tolerance below the AP->PVP gap). A violation raises ``PhaseRulesError`` naming the offending key.

Patterns are Python regexes, matched case-insensitively and word-aware: a match may not start
right after a letter or digit nor end right before a letter (so "AP" never matches "CAP", "PV"
never matches "PVC", but "Art1.25" is still arterial). Underscores and runs of whitespace in the
description become single spaces first. Reasons name the pattern that matched, never the
description text. ``no_agent_values`` are matched against the whole ContrastBolusAgent value instead.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, Mapping


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


DEFAULT_NC_PATTERNS: tuple[str, ...] = (
    r"non[\s-]*contrast", r"non[\s-]*con", r"no[\s-]*contrast", r"pre[\s-]*contrast", r"(?:un|non)[\s-]*enhanced",
    # "without"/"w/o"/"wo" say nothing of the IV phase when what is left out is oral contrast ("W IV WO ORAL")
    r"without(?:\s+contrast)?(?![\s-]*oral)", r"(?<!w[/&+])w\s*/\s*o(?![\s-]*oral)", r"(?<!w[/&+])wo(?![\s-]*oral)",
    r"plain", r"nati(?:ve|v)", r"pre",
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
