"""Deterministic DICOM UIDs: ``2.25.<decimal of 128 bits of a hash>`` of the seed, case and role.

The same seed gives the same study, series and instance UIDs; different seeds or cases give
different ones (a 2.25 UID is a UUID-derived root needing no registered prefix).
"""
from __future__ import annotations

import hashlib


def make_uid(*parts: object) -> str:
    """A 2.25 UID derived from ``parts`` (at most 44 characters)."""
    digest = hashlib.sha256("/".join(str(p) for p in ("liver-node-phantom", *parts)).encode()).digest()
    value = int.from_bytes(digest[:16], "big") >> 1  # 127 bits: at most 39 decimal digits
    return f"2.25.{value}"


class StudyUids:
    """UIDs of one phantom study, keyed by (seed, case index, options fingerprint)."""

    def __init__(self, seed: int, index: int, salt: str = "") -> None:
        self._key = (seed, index, salt)

    @property
    def study(self) -> str:
        return make_uid(*self._key, "study")

    @property
    def frame_of_reference(self) -> str:
        return make_uid(*self._key, "for")

    def series(self, series_number: int) -> str:
        return make_uid(*self._key, "series", series_number)

    def instance(self, series_number: int, slice_index: int) -> str:
        return make_uid(*self._key, "instance", series_number, slice_index)

    def irradiation_event(self, series_number: int) -> str:
        return make_uid(*self._key, "irradiation", series_number)

    def dimension_organization(self, series_number: int) -> str:
        return make_uid(*self._key, "dimorg", series_number)
