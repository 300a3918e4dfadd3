"""``Analyzer.run_study``: series on disk in, a typed StudyResult out (no networking, no database).

Stages, each timed: load (decode, sort, HU), detect (YOLO on W400/L40 slices of the AP and PVP
series), lesions (3D grouping per series, matching across phases), classify (LiLNet hierarchy on
224x224 crops), aggregate (per lesion and per case). Models load once, when the Analyzer is built.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from .hierarchy import Decision, HierarchyLogits, decide
from .imaging import window_u8
from .classify.preprocess import GREY, PHASE_PAIR
from .classify.verifier import lesion_probability
from .detect.channels import PHASE_PAIR as PHASE_PAIR_DETECTOR
from .detect.partner import parallel_planes, partner_volume
from .lesion_crops import PhaseImages, lesion_crops
from .lesions import Box2D, SeriesLesion, group_boxes, match_phases, measure, merge_fragments
from .reporting_rule import CandidateScore, is_reported
from .result import LesionResult, ModelInfo, SeriesUse, StudyResult
from .series import LoadedSeries, SeriesError, load_series

log = logging.getLogger(__name__)

PRIMARY_PHASES = ("AP", "PVP")


@dataclass(frozen=True)
class SeriesInput:
    series_uid: str
    phase: str  # NC / AP / PVP / DELAYED / OTHER, from pipeline.phases
    phase_reason: str
    paths: tuple[Path, ...]
    ignored: bool = False  # not a diagnostic series (scout, dose report, iodine map...): never analysed


class Detector(Protocol):
    def detect(self, slices_u8: np.ndarray, slice_spacing_mm: float | None = None,
               partner_u8: np.ndarray | None = None) -> list[list]: ...


class Classifier(Protocol):
    input_mode: str  # "grey" crops [M,H,W], or "phase-pair" (AP, PVP) crops [M,2,H,W]

    def logits(self, crops_u8: np.ndarray) -> HierarchyLogits: ...


class Verifier(Protocol):
    input_mode: str
    threshold: float  # p(lesion) a candidate below accept_conf needs to be reported (without a candidate score)
    candidate_conf: float | None  # the lowest detector confidence it is asked about (None: the detector's lesion_conf)
    accept_conf: float | None  # where the lower bar starts (None: the detector's lesion_conf)
    confident_threshold: float  # p(lesion) a candidate at or above accept_conf needs
    candidate_score: CandidateScore | None  # when set, it decides instead of the two bars

    def logits(self, crops_u8: np.ndarray) -> np.ndarray: ...  # [M, 2] background, lesion


@dataclass(frozen=True)
class AnalyzerOptions:
    unknown_phase: str = "run"  # "run": analyse an unlabelled series, marked unknown phase; "refuse"
    max_crops_per_view: int = 5  # largest cross-sections of a lesion per phase sent to the classifier
    min_crop_px: float = 6.0  # boxes smaller than this on both sides are too small to classify


class Analyzer:
    def __init__(self, detector: Detector, classifier: Classifier, models: list[ModelInfo],
                 options: AnalyzerOptions = AnalyzerOptions(), verifier: Verifier | None = None) -> None:
        self.detector = detector
        self.classifier = classifier
        self.models = models
        self.options = options
        self.verifier = verifier
        rule = getattr(verifier, "candidate_score", None)
        if rule is not None and rule.max_crops_per_view not in (None, options.max_crops_per_view):
            # the score counts crops: another cap would shift every candidate's score against its bar
            raise ValueError(f"the verifier's candidate score was fitted with max_crops_per_view "
                             f"{rule.max_crops_per_view}, the analyzer uses {options.max_crops_per_view}")

    @classmethod
    def from_weights(cls, weights_dir: Path, device: str | None = None,
                     options: AnalyzerOptions = AnalyzerOptions()) -> "Analyzer":
        from .classify import verifier as verifier_module
        from .classify.classifier import LesionClassifier
        from .detect.detector import LesionDetector

        detector = LesionDetector.from_manifest(weights_dir, device=device)
        classifier = LesionClassifier.from_manifest(weights_dir, device=device)
        models = [ModelInfo(detector.name, detector.version, detector.sha256)]
        models += [ModelInfo(classifier.names[k], classifier.versions[k], classifier.sha256s[k]) for k in classifier.names]
        verifier = None
        if (Path(weights_dir) / verifier_module.MANIFEST_NAME).is_file():
            verifier = verifier_module.LesionVerifier.from_manifest(weights_dir, device=device)
            models.append(ModelInfo(verifier.name, verifier.version, verifier.sha256))
        return cls(detector, classifier, models, options, verifier)

    # --- phase choice -----------------------------------------------------------------------------
    @property
    def heatmap(self) -> Callable[[np.ndarray, Decision], np.ndarray] | None:
        """The classifier's Grad-CAM for the result objects (None when it has none)."""
        return getattr(self.classifier, "heatmap", None)

    def _choose(self, series: Sequence[SeriesInput]) -> tuple[list[list[SeriesInput]], bool, str | None]:
        """Per phase to analyse, its candidate series in order of preference; whether the phase is
        unknown; or a reason to refuse. The first candidate that loads is used: a coronal reformat
        labelled with the phase is refused by the loader, and the axial series after it is tried."""
        by_phase: dict[str, list[SeriesInput]] = {}
        for s in series:
            if not s.ignored:
                by_phase.setdefault(s.phase, []).append(s)

        def ranked(candidates: list[SeriesInput]) -> list[SeriesInput]:
            # Several recons of one phase: the one with most images (thinnest) carries most evidence;
            # the UID breaks ties, so a batch run and the node choose alike whatever the file order.
            return sorted(candidates, key=lambda s: (-len(s.paths), s.series_uid))

        chosen = [ranked(by_phase[p]) for p in PRIMARY_PHASES if p in by_phase]
        if chosen:
            return chosen, False, None
        others = by_phase.get("OTHER", [])
        if others and self.options.unknown_phase == "run":
            return [ranked(others)], True, None
        if others:
            return [], False, "no arterial or portal-venous series identified (unknown-phase analysis disabled)"
        return [], False, "no arterial, portal-venous or unlabelled CT series in the study"

    # --- the study --------------------------------------------------------------------------------
    def run_study(self, study_uid: str, series: Sequence[SeriesInput]) -> StudyResult:
        result = StudyResult(study_uid, status="ok", models=list(self.models))
        chosen, unknown_phase, refusal = self._choose(series)
        chosen_ids = {s.series_uid for candidates in chosen for s in candidates}
        t = time.perf_counter()
        loaded: list[tuple[SeriesInput, LoadedSeries]] = []
        uses: dict[str, SeriesUse] = {}
        for s in series:
            uses[s.series_uid] = SeriesUse(s.series_uid, s.phase, s.phase_reason, False)
        for candidates in chosen:
            for s in candidates:
                try:
                    ls = load_series(s.paths)
                except SeriesError as exc:
                    uses[s.series_uid] = SeriesUse(s.series_uid, s.phase, s.phase_reason, False,
                                                   (f"not analysed: {exc}",))
                    continue
                loaded.append((s, ls))
                uses[s.series_uid] = SeriesUse(s.series_uid, s.phase, s.phase_reason, True, ls.notes)
                break
        result.series = [uses[s.series_uid] for s in series]
        result.timings_s["load"] = time.perf_counter() - t
        if refusal or not loaded:
            result.status = "not_analysed"
            result.reason = refusal or "; ".join(n for u in uses.values() if u.series_uid in chosen_ids for n in u.notes)
            return result
        result.phase_mode = ("unknown phase" if unknown_phase else
                             "AP+PVP" if len(loaded) == 2 else f"{loaded[0][0].phase} only")
        if len(loaded) < len(chosen) or len(loaded) == 1:
            result.notes.append(f"analysed on {', '.join(s.phase for s, _ in loaded)} only")

        t = time.perf_counter()
        windowed = {s.series_uid: window_u8(ls.hu) for s, ls in loaded}
        per_series: list[list[SeriesLesion]] = []
        detections = {}
        partners, partner_note = self._partners(loaded, windowed)
        if partner_note:
            result.notes.append(partner_note)
        for s, ls in loaded:
            detections[s.series_uid] = self.detector.detect(windowed[s.series_uid], ls.geometry.slice_spacing,
                                                            partner_u8=partners.get(s.series_uid))
        result.timings_s["detect"] = time.perf_counter() - t

        t = time.perf_counter()
        # Without a verifier the detector's lesion_conf decides. With one, tracks down to its candidate_conf
        # are proposed and its candidate score decides, or p(lesion) at a lower bar from accept_conf up
        # (pipeline.reporting_rule).
        accept_conf = lesion_conf = float(getattr(self.detector, "lesion_conf", 0.0))
        if self.verifier is not None and self.verifier.candidate_conf is not None:
            lesion_conf = min(lesion_conf, float(self.verifier.candidate_conf))
        if self.verifier is not None and self.verifier.accept_conf is not None:
            accept_conf = float(self.verifier.accept_conf)
        for s, ls in loaded:
            boxes = [[Box2D(i, d.x1, d.y1, d.x2, d.y2, d.confidence) for d in dets]
                     for i, dets in enumerate(detections[s.series_uid])]
            phase = s.phase if s.phase in PRIMARY_PHASES else "UNKNOWN"
            tracks = merge_fragments([tr for tr in group_boxes(boxes) if max(b.confidence for b in tr) >= lesion_conf])
            per_series.append([measure(track, ls, phase) for track in tracks])
        frames = {ls.geometry.frame_of_reference_uid for _, ls in loaded}
        if len(frames) == 1 and None not in frames:
            lesions = match_phases(per_series)
        else:
            result.notes.append("series do not share one Frame of Reference: lesions not matched across phases")
            lesions = match_phases([[l] for group in per_series for l in group], match_mm=-1.0)
        result.timings_s["lesions"] = time.perf_counter() - t

        t = time.perf_counter()
        images = {s.series_uid: PhaseImages(ls, s.phase if s.phase in PRIMARY_PHASES else "UNKNOWN",
                                            windowed[s.series_uid]) for s, ls in loaded}
        paired = getattr(self.classifier, "input_mode", GREY) == PHASE_PAIR
        crops, owners = lesion_crops(lesions, images, paired=paired, max_per_view=self.options.max_crops_per_view,
                                     min_px=self.options.min_crop_px)
        logits = self.classifier.logits(crops) if crops is not None else None
        result.timings_s["classify"] = time.perf_counter() - t

        t = time.perf_counter()
        verified = self._verify(lesions, images, crops, paired) if crops is not None else None
        result.timings_s["verify"] = time.perf_counter() - t

        t = time.perf_counter()
        owners_arr = np.array(owners)
        reported: list[np.ndarray] = []
        rejected = unseen = too_small = 0
        for lesion in lesions:
            rows = np.flatnonzero(owners_arr == lesion.index) if owners else np.array([], dtype=int)
            top = max(v.confidence for v in lesion.views)
            unsure = self.verifier is not None and top < accept_conf
            if rows.size == 0:
                if unsure:  # a candidate for the verifier with nothing it could look at
                    unseen += 1
                else:
                    too_small += 1
                    result.notes.append(f"lesion {lesion.index} too small to classify "
                                        f"({lesion.primary.long_axis_mm:.1f} mm)")
                continue
            p_lesion = score = None
            if verified is not None:
                p_lesion = lesion_probability(verified[rows])
                if (rule := self.verifier.candidate_score) is not None:
                    score = rule(top, p_lesion, lesion.primary.long_axis_mm, int(rows.size))
                    keep = score >= rule.threshold
                else:
                    keep = is_reported(top, p_lesion, accept_conf, self.verifier.threshold,
                                       self.verifier.confident_threshold)
                if not keep:
                    rejected += 1
                    continue
            reported.append(rows)
            result.lesions.append(LesionResult(lesion, decide(logits.select(rows)), p_lesion, candidate_score=score))
        if rejected:
            bars = f"p(lesion) < {self.verifier.threshold:g}"
            if self.verifier.candidate_score is not None:
                bars = f"candidate score < {self.verifier.candidate_score.threshold:g}"
            elif self.verifier.confident_threshold > 0:
                bars += f", or < {self.verifier.confident_threshold:g} at detector confidence >= {accept_conf:g}"
            result.notes.append(f"{rejected} detector candidate(s) rejected by the lesion verifier ({bars})")
        if unseen:
            result.notes.append(f"{unseen} detector candidate(s) below confidence {accept_conf:g} not reported: "
                                f"too small to crop for the lesion verifier")
        result.candidates = {"proposed": len(lesions), "reported": len(result.lesions),
                             "rejected_by_verifier": rejected, "too_small": unseen + too_small}
        if reported:  # the paper's patient averaging: all crops of all reported lesions
            result.case = decide(logits.select(np.concatenate(reported)))
        result.timings_s["aggregate"] = time.perf_counter() - t
        log.info("study analysed study_uid=%s lesions=%d mode=%s", study_uid, len(result.lesions), result.phase_mode)
        return result

    def _partners(self, loaded: Sequence[tuple[SeriesInput, LoadedSeries]],
                  windowed: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str | None]:
        """Per series, the other phase on its grid, for a ``phase-pair`` detector that has two series
        in one Frame of Reference with parallel planes to pair; empty otherwise (each series is then
        its own partner), with a note when two series could not be paired for their tilt."""
        if getattr(self.detector, "channels", None) != PHASE_PAIR_DETECTOR or len(loaded) != 2:
            return {}, None
        (sa, la), (sb, lb) = loaded
        frame = la.geometry.frame_of_reference_uid
        if frame is None or frame != lb.geometry.frame_of_reference_uid:
            return {}, None  # noted where lesions are matched across phases
        if not parallel_planes(la.geometry, lb.geometry):
            return {}, "phases' slice planes are tilted against each other: each phase detected without the other"
        return {sa.series_uid: partner_volume(la.geometry, windowed[sa.series_uid], lb.geometry, windowed[sb.series_uid]),
                sb.series_uid: partner_volume(lb.geometry, windowed[sb.series_uid], la.geometry, windowed[sa.series_uid])}, None

    def _verify(self, lesions, images, crops: np.ndarray, paired: bool) -> np.ndarray | None:
        """The verifier's logits for every crop row (the classifier's crops, cut again only when the
        verifier takes the other input mode); None without a verifier."""
        if self.verifier is None:
            return None
        want_pairs = self.verifier.input_mode == PHASE_PAIR
        if want_pairs != paired:
            crops, _ = lesion_crops(lesions, images, paired=want_pairs, max_per_view=self.options.max_crops_per_view,
                                    min_px=self.options.min_crop_px)
        return self.verifier.logits(crops)
