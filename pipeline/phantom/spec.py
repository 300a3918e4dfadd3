"""Value types shared by the phantom modules: classes, phases, geometry and the sampled case spec.

Everything here is a frozen dataclass or an enum, so a ``CaseSpec`` fully determines a case: the
renderer and the DICOM writer read it and add nothing random of their own (noise is drawn from
generators seeded by the spec's ``seed`` and ``index``).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from .anatomy_spec import AnatomySpec


class LesionClass(str, enum.Enum):
    """The six LiLNet lesion classes."""

    HCC = "HCC"
    ICC = "ICC"
    MET = "MET"
    FNH = "FNH"
    HEM = "HEM"
    CYST = "CYST"

    @property
    def malignant(self) -> bool:
        return self in (LesionClass.HCC, LesionClass.ICC, LesionClass.MET)


class ContrastPhase(str, enum.Enum):
    """Acquisition phase of one series; the names match ``pipeline.phases.Phase`` member names."""

    NC = "NC"
    AP = "AP"
    PVP = "PVP"
    DELAYED = "DELAYED"

    @property
    def contrast(self) -> bool:
        return self is not ContrastPhase.NC


# Time (s after bolus start) -> which phase's table value applies. Each phase has a plateau over
# the delays the sampler draws for it (AP 28-42 s, PVP 55-100 s, delayed 170-300 s); between
# plateaus values ramp linearly, so an early arterial scan (18-28 s) looks less arterial.
_PLATEAU_T = (0.0, 28.0, 42.0, 55.0, 100.0, 170.0)

DEFAULT_PHASES: tuple[ContrastPhase, ...] = (ContrastPhase.NC, ContrastPhase.AP, ContrastPhase.PVP)


@dataclass(frozen=True)
class PhaseValues:
    """One number per phase; ``at(t)`` interpolates between the phase anchors in time."""

    nc: float
    ap: float
    pvp: float
    delayed: float

    def of(self, phase: ContrastPhase) -> float:
        return {ContrastPhase.NC: self.nc, ContrastPhase.AP: self.ap,
                ContrastPhase.PVP: self.pvp, ContrastPhase.DELAYED: self.delayed}[phase]

    def at(self, t_s: float) -> float:
        """Value ``t_s`` seconds after bolus start (negative: before contrast)."""
        ys = (self.nc, self.ap, self.ap, self.pvp, self.pvp, self.delayed)
        return float(np.interp(t_s, _PLATEAU_T, ys))


@dataclass(frozen=True)
class Geometry:
    """Axial image grid in patient coordinates (LPS, mm); slice index 0 is the most inferior.

    ``origin_mm`` is the centre of the first pixel (row 0, column 0) of slice 0; columns run
    along +x (patient left), rows along +y (posterior), slices along +z (superior).
    """

    rows: int
    cols: int
    pixel_spacing_mm: float
    slice_thickness_mm: float
    n_slices: int
    origin_mm: tuple[float, float, float]

    @property
    def slice_spacing_mm(self) -> float:
        return self.slice_thickness_mm

    def z_mm(self, k: int) -> float:
        return self.origin_mm[2] + k * self.slice_spacing_mm

    def x_axis(self) -> np.ndarray:
        return (self.origin_mm[0] + np.arange(self.cols) * self.pixel_spacing_mm).astype(np.float32)

    def y_axis(self) -> np.ndarray:
        return (self.origin_mm[1] + np.arange(self.rows) * self.pixel_spacing_mm).astype(np.float32)

    def position(self, k: int) -> tuple[float, float, float]:
        """ImagePositionPatient of slice ``k``."""
        return (self.origin_mm[0], self.origin_mm[1], self.z_mm(k))

    def to_pixel(self, x_mm: float, y_mm: float) -> tuple[float, float]:
        """(column, row) of a point, in pixel-index units (pixel centres at integers)."""
        return ((x_mm - self.origin_mm[0]) / self.pixel_spacing_mm,
                (y_mm - self.origin_mm[1]) / self.pixel_spacing_mm)


@dataclass(frozen=True)
class Wave:
    """One term of a smooth random function on the unit sphere or in space: a*cos(f*<d,n>+p)."""

    direction: tuple[float, float, float]
    frequency: float
    phase: float
    amplitude: float


@dataclass(frozen=True)
class LesionAppearance:
    """Concrete (sampled) appearance of one lesion.

    Zone values are HU relative to the liver in the same phase (``reference == "liver"``),
    absolute HU (``"water"``), or relative to the blood pool (``"blood"``, haemangioma).
    """

    reference: str
    body: PhaseValues
    rim: PhaseValues | None = None
    rim_fraction: float = 0.0
    capsule: PhaseValues | None = None
    capsule_mm: float = 0.0
    scar: PhaseValues | None = None
    scar_fraction: float = 0.0
    scar_spokes: int = 0
    necrosis_hu: float | None = None
    necrosis_fraction: float = 0.0
    fill: PhaseValues | None = None
    nodules: tuple[tuple[float, float, float], ...] = ()
    blood_fraction: float = 1.0
    texture_hu: float = 0.0
    edge_mm: float = 0.8


@dataclass(frozen=True)
class LesionSpec:
    """A lesion: a perturbed ellipsoid with an appearance, placed inside the liver."""

    lesion_id: int
    cls: LesionClass
    centre_mm: tuple[float, float, float]
    radii_mm: tuple[float, float, float]
    angle_rad: float
    shape_waves: tuple[Wave, ...]
    texture_waves: tuple[Wave, ...]
    appearance: LesionAppearance

    @property
    def diameters_mm(self) -> tuple[float, float, float]:
        return (2 * self.radii_mm[0], 2 * self.radii_mm[1], 2 * self.radii_mm[2])

    @property
    def max_extent_mm(self) -> float:
        """Upper bound of the distance from centre to any surface point."""
        bulge = 1.0 + sum(abs(w.amplitude) for w in self.shape_waves)
        return max(self.radii_mm) * bulge


@dataclass(frozen=True)
class PhaseAcquisition:
    """One series of the study: its phase, timing and header flavour."""

    phase: ContrastPhase
    delay_s: float  # seconds after bolus start; negative for the non-contrast series
    series_number: int
    series_description: str
    kernel: str
    noise_std_hu: float


@dataclass(frozen=True)
class HeaderSpec:
    """Study-level header values (all synthetic)."""

    patient_name: str
    patient_id: str
    patient_sex: str
    patient_age: str
    study_date: str  # YYYYMMDD
    bolus_start_s: float  # seconds after midnight
    nc_start_s: float  # seconds after midnight of the first (non-contrast) scan
    accession: str
    study_id: str
    manufacturer_model: str
    station: str
    kvp: float
    agent: str
    agent_volume_ml: float
    agent_concentration: float
    flow_rate_ml_s: float
    pixel_representation: int  # 0: unsigned with intercept -1024, 1: signed
    rescale_intercept: float
    bits_stored: int
    instances_head_first: bool  # InstanceNumber 1 at the most superior slice
    scan_duration_s: float


@dataclass(frozen=True)
class CaseOptions:
    """What a caller asks for; the rest is sampled per case."""

    phases: tuple[ContrastPhase, ...] = DEFAULT_PHASES
    n_slices: int = 40
    slice_thickness_mm: float = 5.0
    lesion_classes: tuple[LesionClass, ...] | None = None  # None: random mix; (): normal case
    normal_fraction: float = 0.15
    max_lesions: int = 4
    rows: int = 512
    cols: int = 512
    noise_scale: float = 1.0  # 0 gives noiseless images (tests of the enhancement tables)


@dataclass(frozen=True)
class CaseSpec:
    """Everything needed to render and write one study."""

    seed: int
    index: int
    geometry: Geometry
    anatomy: AnatomySpec
    lesions: tuple[LesionSpec, ...]
    acquisitions: tuple[PhaseAcquisition, ...]
    header: HeaderSpec
    contrast_factor: float
    blur_sigma_px: float
    noise_grain_px: float
    options: CaseOptions = field(default_factory=CaseOptions)

    @property
    def case_id(self) -> str:
        return self.header.patient_id

    def acquisition(self, phase: ContrastPhase) -> PhaseAcquisition:
        for acq in self.acquisitions:
            if acq.phase is phase:
                return acq
        raise KeyError(phase)
