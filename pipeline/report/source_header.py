"""The received study's header as the result objects copy it: tolerant of what real sources omit.

Anonymisers and some modalities drop Type 2 patient and study attributes (birth date, sex, accession
number, study ID); highdicom reads them unconditionally, so they are added empty, as Type 2 allows.
A source with code extensions (e.g. Japanese, "\\ISO 2022 IR 87") stores an empty first Specific
Character Set value, meaning the default repertoire; highdicom refuses the empty value, so it is
named ("ISO 2022 IR 6"). A character set highdicom still refuses (highdicom 0.28 misspells Korean
"ISO 2022 IR 149" and lacks "ISO 2022 IR 58", Simplified Chinese) is decoded and the results are
written in UTF-8 ("ISO_IR 192"), so the patient's name still reads right.
A value highdicom cannot parse (a birth date "1980-05-12", a sex "Male"), or one that is not DICOM's
form (an ACR-NEMA date "1980.05.12", which pydicom reads but the results must not carry), would fail the whole result
and put the value in the error; such a value is left empty in the results, as Type 2 allows, and the
source keeps it.
"""
from __future__ import annotations

import copy
import re

import numpy as np
from pydicom import Dataset
from pydicom.valuerep import DA, TM

from .. import header_values

TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
         "StudyDate", "StudyTime", "ReferringPhysicianName")


PARSED = {"PatientBirthDate": DA, "StudyDate": DA, "StudyTime": TM}
FORMS = {DA: re.compile(r"\d{8}"), TM: re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")}  # PS3.5 6.2
SEXES = ("M", "F", "O")
UTF8 = "ISO_IR 192"


def _parses(parse, value: object) -> bool:
    text = str(value).rstrip()
    if not FORMS[parse].fullmatch(text):
        return False
    try:
        parse(text)
    except (TypeError, ValueError):
        return False
    return True


def _highdicom_refuses(charset: object) -> bool:
    try:
        from highdicom.valuerep import _check_specific_character_set
    except ImportError:  # a highdicom without the check: let it decide when it builds
        return False
    try:
        _check_specific_character_set(charset)
    except (TypeError, ValueError):
        return True
    return False


def reference_header(ds: Dataset) -> Dataset:
    ref = copy.deepcopy(ds)  # a shallow copy shares pydicom's element dict: the caller's header would change
    for keyword in TYPE2:
        if keyword not in ref:
            setattr(ref, keyword, None)
    for keyword, parse in PARSED.items():
        if ref.get(keyword) and not _parses(parse, ref.get(keyword)):
            setattr(ref, keyword, None)
    if ref.get("PatientSex") and ref.PatientSex not in SEXES:
        ref.PatientSex = None
    charset = ref.get("SpecificCharacterSet")
    if charset is not None and not isinstance(charset, str) and len(charset) > 1 and not charset[0]:
        ref.SpecificCharacterSet = ["ISO 2022 IR 6", *list(charset)[1:]]
    if charset is not None and _highdicom_refuses(ref.SpecificCharacterSet):
        ref.decode()
        ref.SpecificCharacterSet = UTF8
    return ref


def patient_orientation(ds: Dataset) -> tuple[str, str]:
    """Patient Orientation of an image drawn on the source's pixel grid: the patient direction of its rows
    and of its columns (DICOM's L/R, P/A, H/F), from its orientation; ("L", "P") for a supine axial one."""
    try:
        iop = [float(v) for v in header_values.orientation(ds)]
    except (TypeError, ValueError):
        return "L", "P"
    if len(iop) != 6:
        return "L", "P"

    def letter(v: list[float]) -> str:
        i = int(np.argmax(np.abs(v)))
        return ("LR", "PA", "HF")[i][0 if v[i] > 0 else 1]

    return letter(iop[:3]), letter(iop[3:])
