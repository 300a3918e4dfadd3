"""Phase labelling: description table, bolus timing, contrast/NC rule, ordering, rules validation, real headers."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pipeline.phases import (
    Phase,
    PhaseError,
    PhaseLabel,
    PhaseRules,
    PhaseRulesError,
    SeriesHeader,
    label_series,
    parse_tm,
)

RULES = PhaseRules()
REALDATA = Path("/work/shared/realdata")


def hdr(uid: str = "1.2.3.1", desc: str | None = None, *, agent: str | None = None, start: str | None = None,
        acq: str | None = None, modality: str = "CT", image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL"),
        n: int = 100) -> SeriesHeader:
    return SeriesHeader(
        series_instance_uid=uid, modality=modality, series_description=desc, series_number=None,
        image_type=image_type, contrast_agent=agent, contrast_route="IV" if agent else None,
        contrast_start_time=start, acquisition_time=acq, series_time=acq, protocol_name="LIVER 3 PHASE",
        image_orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), num_instances=n,
    )


def one(h: SeriesHeader, rules: PhaseRules = RULES) -> PhaseLabel:
    return label_series([h], rules)[h.series_instance_uid]


# expected: a Phase, "none" (no keyword -> OTHER), "ignored" (-> OTHER) or "conflict" (-> OTHER)
DESCRIPTIONS = [
    # Siemens style
    ("Abdomen 1.0 I26f 3", "none"),
    ("Abdomen 5.0 B30f", "none"),
    ("PV 5.0 B30f", Phase.PVP),
    ("Art 1.0 Br40 3", Phase.AP),
    ("Arterial 1.0 I30f 3", Phase.AP),
    ("Venous 3.0 Br40", Phase.PVP),
    ("Delayed 3.0 B30f", Phase.DELAYED),
    ("Nativ 5.0 B30f", Phase.NC),
    ("Thorax-Abdomen 5.0 B31f", "none"),
    ("Topogram 0.6 T20f", "ignored"),
    ("Patient Protocol", "ignored"),
    ("PreMonitoring 10.0 B30f", "ignored"),
    # GE style
    ("Art 1.25mm", Phase.AP),
    ("ART PHASE 2.5MM STD", Phase.AP),
    ("PORTAL VENOUS 5mm", Phase.PVP),
    ("PV 2.5mm SOFT", Phase.PVP),
    ("3 MIN DELAY", Phase.DELAYED),
    ("Delayed 3 min", Phase.DELAYED),
    ("NON CON 5mm", Phase.NC),
    ("WO contrast", Phase.NC),
    ("W/O 5.0", Phase.NC),
    # what is left out is oral contrast: nothing said of the IV phase
    ("ABD PEL W IV WO ORAL", "none"),
    ("CT ABDOMEN PELVIS W IV CONTRAST WO ORAL", "none"),
    ("ABD/PEL WITH IV WITHOUT ORAL 5mm", "none"),
    ("PORTAL VENOUS W/O ORAL", Phase.PVP),
    ("Abdomen WO IV WO ORAL", Phase.NC),
    ("Pre 1.25mm Stnd", Phase.NC),
    ("Scout", "ignored"),
    ("Dose Report", "ignored"),
    ("SmartPrep", "ignored"),
    ("Screen Save", "ignored"),
    ("CAP 5mm", "none"),
    ("5mm Std C/A/P", "none"),
    # Philips style
    ("Arterial phase iDose 4", Phase.AP),
    ("Portal venous phase", Phase.PVP),
    ("Late arterial", Phase.AP),
    ("Early arterial 1mm", Phase.AP),
    ("Equilibrium 5mm", Phase.DELAYED),
    ("Plain 5mm", Phase.NC),
    ("Unenhanced 3mm", Phase.NC),
    ("Non-contrast", Phase.NC),
    ("Surview", "ignored"),
    # Canon / Toshiba style
    ("HAP 0.5 FC08", Phase.AP),
    ("PVP 5.0 FC18", Phase.PVP),
    ("EQ 5.0 FC18", Phase.DELAYED),
    ("Pre-contrast AIDR 3D", Phase.NC),
    ("Late phase 5 min", Phase.DELAYED),
    ("Bolus tracking", "ignored"),
    # tricky ones
    ("AP view", "none"),
    ("Lateral 5mm", "none"),
    ("LIVER 3 PHASE", "none"),
    ("W/WO", "none"),
    ("Abd/Pel 5mm", "none"),
    ("PVC check", "none"),
    ("VNC 1.0 Qr40", "ignored"),
    ("Virtual non-contrast", "ignored"),
    ("Iodine map", "ignored"),
    ("C- 5mm", Phase.NC),
    ("NCCT abdomen", Phase.NC),
    ("CTA Abdomen", Phase.AP),
    ("Ven 5mm", Phase.PVP),
    ("Delay 10min", Phase.DELAYED),
    ("Cor PV MPR 3mm", Phase.PVP),
    ("Sag_Art_MIP", Phase.AP),
    ("Arterial / Portal", "conflict"),
    ("Pre and Delayed", "conflict"),
    ("", "none"),
    (None, "none"),
]


@pytest.mark.parametrize(("desc", "expected"), DESCRIPTIONS)
def test_description_table(desc: str | None, expected: object) -> None:
    label = one(hdr(desc=desc))
    assert label.reason
    if isinstance(expected, Phase):
        assert (label.phase, label.source) == (expected, "description")
        assert f"description matches {expected.value} pattern" in label.reason
    else:
        assert label.phase is Phase.OTHER
        if expected == "ignored":
            assert label.source == "ignored" and "ignore pattern" in label.reason
        elif expected == "conflict":
            assert label.source == "description" and "several phases" in label.reason
        else:
            assert "no phase keyword in description" in label.reason


def test_description_table_is_large_enough() -> None:
    assert len(DESCRIPTIONS) >= 40


def test_reason_names_pattern_not_description() -> None:
    label = one(hdr(desc="Zyxwv arterial Qwerty"))
    assert label.phase is Phase.AP
    assert label.reason == "description matches AP pattern 'arterial'"
    for marker in ("Zyxwv", "Qwerty"):
        assert marker not in label.reason


# --- timing -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("start", "acq", "expected"),
    [
        ("120000", "120030", Phase.AP),
        ("120000", "120015", Phase.AP),  # window edges are inclusive
        ("120000", "120045", Phase.AP),
        ("120000", "120110", Phase.PVP),  # 70 s
        ("120000", "120140", Phase.PVP),  # 100 s
        ("120000", "120320", Phase.DELAYED),  # 200 s
        ("120000", "120230", Phase.DELAYED),  # 150 s
        ("120000.500", "120031.250", Phase.AP),
        ("12:00:00", "12:01:10", Phase.PVP),  # legacy TM with colons
        ("235950", "000020", Phase.AP),  # midnight wrap: 30 s
        ("235900", "000010", Phase.PVP),  # midnight wrap: 70 s
        ("000030", "235930", Phase.NC),  # acquired 60 s before the bolus, across midnight
        ("120000", "115800", Phase.NC),
    ],
)
def test_timing_only(start: str, acq: str, expected: Phase) -> None:
    label = one(hdr(desc="Abdomen 5.0 B30f", agent="OMNIPAQUE 350", start=start, acq=acq))
    assert (label.phase, label.source) == (expected, "timing")
    assert "no phase keyword in description" in label.reason


@pytest.mark.parametrize(
    ("acq", "where"),
    [("120047", "between the AP (15-45 s) and PVP (50-100 s) windows"),
     ("120010", "before the AP window"),
     ("120000", "before the AP window"),
     ("120200", "between the PVP window (50-100 s) and DELAYED (150 s)")],
)
def test_timing_gap_is_ambiguous(acq: str, where: str) -> None:
    label = one(hdr(desc="Body 5mm", agent="ISOVUE 370", start="120000", acq=acq))
    assert (label.phase, label.source) == (Phase.OTHER, "timing")
    assert "ambiguous timing" in label.reason and where in label.reason


def test_ambiguous_timing_is_not_overridden_by_ordering() -> None:
    labels = label_series([hdr("a", agent="X", start="120000", acq="120030"),
                           hdr("b", agent="X", start="120000", acq="120047")], RULES)
    assert labels["a"].phase is Phase.AP and labels["b"].phase is Phase.OTHER


def test_implausible_timing_is_not_trusted() -> None:
    label = one(hdr(desc="Body", agent="X", start="080000", acq="120000"))
    assert label.phase is Phase.OTHER
    assert "timing not trusted" in label.reason and "single contrast acquisition" in label.reason


def test_description_and_timing_agree() -> None:
    label = one(hdr(desc="Arterial 1mm", start="120000", acq="120035"))
    assert (label.phase, label.source) == (Phase.AP, "description")
    assert "timing agrees" in label.reason


def test_description_contradicted_by_timing_is_a_conflict() -> None:
    label = one(hdr(desc="Arterial 1mm", start="120000", acq="120110"))
    assert (label.phase, label.source) == (Phase.OTHER, "description")
    assert "conflict" in label.reason and "timing says PVP" in label.reason


def test_description_timing_gap_keeps_description() -> None:
    label = one(hdr(desc="Arterial 1mm", start="120000", acq="120047"))
    assert label.phase is Phase.AP


def test_description_conflict_resolved_by_timing() -> None:
    label = one(hdr(desc="Arterial / Portal", start="120000", acq="120110"))
    assert (label.phase, label.source) == (Phase.PVP, "timing")
    assert "several phases" in label.reason


def test_description_conflict_not_resolved_by_unrelated_timing() -> None:
    label = one(hdr(desc="Arterial / Portal", start="120000", acq="120320"))
    assert label.phase is Phase.OTHER and "does not resolve" in label.reason


# --- contrast agent / NC ------------------------------------------------------------------------------
def test_nc_when_acquired_before_contrast_series() -> None:
    labels = label_series([hdr("nc", acq="115800"), hdr("ap", agent="OMNIPAQUE", acq="120030"),
                           hdr("pv", agent="OMNIPAQUE", acq="120100")], RULES)
    assert (labels["nc"].phase, labels["nc"].source) == (Phase.NC, "contrast")
    assert "before the first contrast-enhanced acquisition" in labels["nc"].reason
    assert [labels[u].phase for u in ("ap", "pv")] == [Phase.AP, Phase.PVP]


@pytest.mark.parametrize("agent", ["NONE", "none", "No", "N/A", "", "  "])
def test_negative_agent_values_count_as_absent(agent: str) -> None:
    labels = label_series([hdr("nc", agent=agent, acq="115800"), hdr("pv", desc="PV 5mm", acq="120100")], RULES)
    assert labels["nc"].phase is Phase.NC


def test_no_agent_single_series_is_other() -> None:
    label = one(hdr(desc="Abdomen 5.0", acq="120000"))
    assert label.phase is Phase.OTHER
    assert "no contrast-enhanced series in the study" in label.reason


def test_no_agent_after_contrast_series_is_not_nc() -> None:
    labels = label_series([hdr("pv", desc="Portal venous", acq="120100"), hdr("x", acq="120400")], RULES)
    assert labels["x"].phase is not Phase.NC


def test_no_acquisition_time_is_other() -> None:
    labels = label_series([hdr("x", agent="X"), hdr("pv", desc="PV", acq="120100")], RULES)
    assert labels["x"].phase is Phase.OTHER and "no acquisition time" in labels["x"].reason


# --- ordering -------------------------------------------------------------------------------------------
def test_ordering_two_acquisitions() -> None:
    labels = label_series([hdr("b", agent="X", acq="120100"), hdr("a", agent="X", acq="120030")], RULES)
    assert (labels["a"].phase, labels["a"].source) == (Phase.AP, "ordering")
    assert (labels["b"].phase, labels["b"].source) == (Phase.PVP, "ordering")
    assert "contrast acquisition 2 of 2" in labels["b"].reason
    assert list(labels) == ["b", "a"]  # one label per input series, in input order


def test_ordering_three_acquisitions() -> None:
    labels = label_series([hdr("a", agent="X", acq="120030"), hdr("b", agent="X", acq="120100"),
                           hdr("c", agent="X", acq="120300")], RULES)
    assert [labels[u].phase for u in "abc"] == [Phase.AP, Phase.PVP, Phase.DELAYED]


def test_ordering_recons_share_the_phase() -> None:
    labels = label_series([hdr("a-thin", agent="X", acq="120030"), hdr("a-thick", agent="X", acq="120032"),
                           hdr("p-thin", agent="X", acq="120105"), hdr("p-cor", agent="X", acq="120106")], RULES)
    assert [labels[u].phase for u in ("a-thin", "a-thick", "p-thin", "p-cor")] == [
        Phase.AP, Phase.AP, Phase.PVP, Phase.PVP]


def test_ordering_across_midnight() -> None:
    labels = label_series([hdr("a", agent="X", acq="235950"), hdr("b", agent="X", acq="000030")], RULES)
    assert (labels["a"].phase, labels["b"].phase) == (Phase.AP, Phase.PVP)


def test_ordering_gap_outside_range() -> None:
    labels = label_series([hdr("a", agent="X", acq="120000"), hdr("b", agent="X", acq="120300")], RULES)
    assert {lab.phase for lab in labels.values()} == {Phase.OTHER}
    assert "outside the AP->PVP range 20-90 s" in labels["a"].reason


def test_ordering_three_with_bad_second_gap() -> None:
    labels = label_series([hdr("a", agent="X", acq="120000"), hdr("b", agent="X", acq="120040"),
                           hdr("c", agent="X", acq="120110")], RULES)
    assert {lab.phase for lab in labels.values()} == {Phase.OTHER}
    assert "second gap 30 s" in labels["c"].reason


def test_ordering_four_acquisitions_is_other() -> None:
    times = ["120000", "120040", "120110", "120400"]
    labels = label_series([hdr(str(i), agent="X", acq=t) for i, t in enumerate(times)], RULES)
    assert {lab.phase for lab in labels.values()} == {Phase.OTHER}
    assert "ordering labels only 2 or 3" in labels["0"].reason


def test_single_contrast_series_is_other() -> None:
    label = one(hdr(desc="Body 5.0", agent="OMNIPAQUE", acq="120000"))
    assert (label.phase, label.source) == (Phase.OTHER, "ordering")
    assert label.reason == ("no phase keyword in description, no contrast bolus start time; "
                            "single contrast acquisition, nothing to order")


def test_ordering_uses_described_series_as_anchor() -> None:
    labels = label_series([hdr("a", desc="Art 1.25mm", acq="120030"), hdr("b", agent="X", acq="120110")], RULES)
    assert (labels["b"].phase, labels["b"].source) == (Phase.PVP, "ordering")


def test_ordering_conflicting_with_description_is_other() -> None:
    labels = label_series([hdr("a", desc="Portal venous", acq="120030"), hdr("b", agent="X", acq="120110")], RULES)
    assert labels["a"].phase is Phase.PVP
    assert labels["b"].phase is Phase.OTHER and "conflicts with series labelled" in labels["b"].reason


def test_same_acquisition_inherits_label() -> None:
    labels = label_series([hdr("a", desc="Art 1.25mm", agent="X", acq="120030"),
                           hdr("b", desc="Body 5.0 B30f", agent="X", acq="120033")], RULES)
    assert (labels["b"].phase, labels["b"].source) == (Phase.AP, "ordering")
    assert "same acquisition" in labels["b"].reason


def test_three_phase_study_mixed_sources() -> None:
    labels = label_series([
        hdr("topo", desc="Topogram", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), acq="115500"),
        hdr("nc", desc="Abdomen 5.0", acq="115700"),
        hdr("ap", desc="Art 1.0", agent="ULTRAVIST 370", acq="120030"),
        hdr("pv", desc="Abdomen 1.0 I26f", agent="ULTRAVIST 370", acq="120105"),
        hdr("pv-thick", desc="Abdomen 5.0 B30f", agent="ULTRAVIST 370", acq="120106"),
        hdr("dl", desc="Delayed 5.0", agent="ULTRAVIST 370", acq="120400"),
        hdr("dose", desc="Dose Report", modality="SR"),
    ], RULES)
    assert {u: lab.phase for u, lab in labels.items()} == {
        "topo": Phase.OTHER, "nc": Phase.NC, "ap": Phase.AP, "pv": Phase.PVP, "pv-thick": Phase.PVP,
        "dl": Phase.DELAYED, "dose": Phase.OTHER}
    assert all(lab.reason for lab in labels.values())


# --- ignore rules, errors ----------------------------------------------------------------------------------
def test_non_ct_is_other() -> None:
    label = one(hdr(desc="Arterial", modality="MR"))
    assert (label.phase, label.source) == (Phase.OTHER, "ignored")
    assert "modality 'MR' is not one of CT" in label.reason


def test_localizer_image_type_is_other() -> None:
    label = one(hdr(desc="Arterial", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")))
    assert label.phase is Phase.OTHER and "LOCALIZER" in label.reason


def test_duplicate_series_uid_raises() -> None:
    with pytest.raises(PhaseError):
        label_series([hdr("a"), hdr("a")], RULES)


def test_empty_study() -> None:
    assert label_series([], RULES) == {}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("120000", 43200.0), ("120000.5", 43200.5), ("1200", 43200.0), ("12", 43200.0), ("12:00:01", 43201.0),
     (" 000001 ", 1.0), ("", None), (None, None), ("2500", None), ("12a000", None), ("126000", None)],
)
def test_parse_tm(text: str | None, seconds: float | None) -> None:
    assert parse_tm(text) == seconds


# --- PhaseRules --------------------------------------------------------------------------------------------
def test_rules_from_empty_mapping_are_defaults() -> None:
    assert PhaseRules.from_mapping({}) == PhaseRules()


def test_rules_from_mapping_custom_values() -> None:
    rules = PhaseRules.from_mapping({"ap_patterns": ["dyn 1st"], "ap_window_s": [10, 40], "modalities": ["ct"]})
    assert rules.ap_window_s == (10.0, 40.0) and rules.modalities == ("CT",)
    assert one(hdr(desc="Dyn 1st 2mm"), rules).phase is Phase.AP
    assert one(hdr(desc="Arterial"), rules).phase is Phase.OTHER  # given lists replace the defaults


@pytest.mark.parametrize(
    ("mapping", "key"),
    [
        ({"ap_patern": ["x"]}, "ap_patern"),
        ({"ap_patterns": ["art", "(unclosed"]}, "ap_patterns[1]"),
        ({"pvp_patterns": "portal"}, "pvp_patterns"),
        ({"pvp_patterns": ["x", 3]}, "pvp_patterns[1]"),
        ({"nc_patterns": ["a*"]}, "nc_patterns[0]"),
        ({"ap_window_s": [45, 15]}, "ap_window_s"),
        ({"ap_window_s": [15]}, "ap_window_s"),
        ({"ap_window_s": [15, True]}, "ap_window_s"),
        ({"pvp_window_s": [40, 100]}, "pvp_window_s"),
        ({"delayed_after_s": 90}, "delayed_after_s"),
        ({"delayed_after_s": "150"}, "delayed_after_s"),
        ({"max_timing_s": -1}, "max_timing_s"),
        ({"same_acquisition_s": 30}, "same_acquisition_s"),
        ({"modalities": [""]}, "modalities[0]"),
        ({"_compiled": {}}, "_compiled"),
    ],
)
def test_rules_from_mapping_errors_name_the_key(mapping: dict, key: str) -> None:
    with pytest.raises(PhaseRulesError) as info:
        PhaseRules.from_mapping(mapping)
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}: ") and info.value.message


def test_rules_are_frozen_and_hashable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        RULES.delayed_after_s = 10  # type: ignore[misc]
    assert hash(PhaseRules()) == hash(PhaseRules())


# --- real headers (read in the test only; skipped where the shared data is absent) -----------------------------
def _real_header(files: list[Path], uid: str) -> SeriesHeader:
    pydicom = pytest.importorskip("pydicom")
    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    ds = datasets[0]

    def text(name: str) -> str | None:
        value = ds.get(name)
        return str(value) if value not in (None, "") else None

    acq_times = sorted(str(d.AcquisitionTime) for d in datasets if d.get("AcquisitionTime"))
    iop = ds.get("ImageOrientationPatient")
    return SeriesHeader(
        series_instance_uid=text("SeriesInstanceUID") or uid, modality=str(ds.Modality),
        series_description=text("SeriesDescription"), series_number=ds.get("SeriesNumber"),
        image_type=tuple(ds.get("ImageType") or ()), contrast_agent=text("ContrastBolusAgent"),
        contrast_route=text("ContrastBolusRoute"), contrast_start_time=text("ContrastBolusStartTime"),
        acquisition_time=acq_times[0] if acq_times else None, series_time=text("SeriesTime"),
        protocol_name=text("ProtocolName"), image_orientation=tuple(float(v) for v in iop) if iop else None,
        num_instances=len(files),
    )


def _files(pattern: str) -> list[Path]:
    files = sorted(REALDATA.glob(pattern))
    assert files, f"real data missing ({pattern}): ../shared/realdata must sit beside the checkout"
    return files


def test_real_ircad_series_has_no_phase_tags() -> None:
    files = _files("3dircadb1.1/PATIENT_DICOM/image_*")
    h = _real_header(files[:3], "ircad")
    assert h.contrast_agent is None and h.series_description is None
    label = one(dataclasses.replace(h, num_instances=len(files)))
    assert (label.phase, label.source) == (Phase.OTHER, "none")
    assert label.reason == ("no phase keyword in description, no contrast bolus start time, "
                            "no contrast agent and no contrast-enhanced series in the study")


def test_real_siemens_contrast_series_is_pvp_by_timing() -> None:
    # TotalSegmentator example: "CT Body 3.0", agent APPLIED, bolus start 14:02:16.69, first slice 14:03:52.46
    h = _real_header(_files("totalsegmentator-example-ct-j2k/example_ct_dicom/CT.*"), "totalseg")
    assert h.contrast_agent == "APPLIED"
    label = one(h)
    assert (label.phase, label.source) == (Phase.PVP, "timing")
    assert "acquired 96 s after contrast bolus start" in label.reason


@pytest.mark.parametrize(
    ("path", "expected_reason"),
    [
        # GE chest CT, ContrastBolusAgent ISOVUE300/100, no bolus start time, one series
        ("compressed-ct-transfer-syntaxes/wg04/CT1_UNC.dcm", "single contrast acquisition"),
        # Toshiba, ContrastBolusAgent "CE", no bolus start time
        ("compressed-ct-transfer-syntaxes/pylibjpeg-data/TOSHIBA_J2K_OpenJPEGv2Regression.dcm",
         "single contrast acquisition"),
        # Philips scout: ImageType LOCALIZER
        ("compressed-ct-transfer-syntaxes/pylibjpeg-data/MAROTECH_CT_JP2Lossy.dcm", "ImageType contains LOCALIZER"),
        # GE, no contrast attributes
        ("dcmqi-ct-3slice-liver-seg/ct-3slice/01.dcm", "no contrast-enhanced series in the study"),
    ],
)
def test_real_single_files_are_other_with_reason(path: str, expected_reason: str) -> None:
    label = one(_real_header(_files(path), path))
    assert label.phase is Phase.OTHER
    assert expected_reason in label.reason


def test_the_start_of_a_series_scanned_across_midnight():
    from pipeline.phases import tm_before

    assert tm_before("235940", "000004") and not tm_before("000004", "235940")
    assert tm_before("101500", "101530.5") and not tm_before("101530", "101530")
    assert tm_before("101500", None) and not tm_before(None, "101500") and not tm_before("garbage", "101500")


def test_enhanced_ct_is_labelled_as_its_classic_twin(tmp_path):
    """Enhanced CT keeps the agent, bolus start and acquisition times in sequences and functional groups;
    read from there, each series gets the same phase, by the same step, as the same case written classic."""
    from pipeline.batch import scan_studies, study_inputs
    from pipeline.phantom import CaseOptions, LesionClass, WriteOptions, make_study

    opts = CaseOptions(n_slices=3, lesion_classes=(LesionClass.HCC,), max_lesions=1)
    sources = set()
    for index in range(12):  # cases whose descriptions leave some series to the timing rules
        labels = {}
        for name, write in (("classic", WriteOptions()), ("enhanced", WriteOptions(enhanced=True))):
            out = tmp_path / f"{index}-{name}"
            make_study(out, 5, index, opts, write)
            (series,) = scan_studies(out).values()
            labels[name] = sorted((s.phase, s.phase_reason) for s in study_inputs(series, PhaseRules()))
        assert labels["enhanced"] == labels["classic"], index
        sources |= {reason.split(" ")[0] for _, reason in labels["classic"]}
        if any(reason.startswith("no phase keyword in description; acquired") for _, reason in labels["classic"]):
            break  # a series labelled by its timing alone
    else:
        raise AssertionError(f"no case labelled by bolus timing among 12: {sources}")
