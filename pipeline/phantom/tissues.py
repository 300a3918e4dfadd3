"""Tissue labels, their unenhanced HU, and contrast enhancement curves over time.

Enhancement is the HU added to a tissue ``t`` seconds after the start of an intravenous bolus,
read off piecewise-linear curves that follow textbook multiphase liver CT: the aorta peaks in
the late arterial phase (~35 s), the portal vein and the liver parenchyma in the portal venous
phase (~60-80 s), the renal medulla catches up with the cortex in the nephrographic phase, and
the collecting system fills with excreted contrast in the delayed phase. The spleen is
heterogeneous ("moire") while arterial enhancement dominates.
"""
from __future__ import annotations

import enum

import numpy as np


class Tissue(enum.IntEnum):
    AIR = 0
    TABLE = 1
    FAT = 2
    SKIN = 3
    MUSCLE = 4
    LUNG = 5
    BONE_CORTEX = 6
    BONE_MARROW = 7
    DISC = 8
    CSF = 9
    GAS = 10
    BOWEL_CONTENT = 11
    BOWEL_WALL = 12
    STOMACH_WALL = 13
    KIDNEY_CORTEX = 14
    KIDNEY_MEDULLA = 15
    RENAL_PELVIS = 16
    SPLEEN = 17
    PANCREAS = 18
    AORTA = 19
    IVC = 20
    PORTAL_VEIN = 21
    HEPATIC_VEIN = 22
    LIVER = 23
    GALLBLADDER = 24
    PORTAL_BRANCH = 25  # intrahepatic portal vein branches


N_TISSUES = len(Tissue)

# Unenhanced HU (before per-case jitter).
BASE_HU: dict[Tissue, float] = {
    Tissue.AIR: -1000.0,
    Tissue.TABLE: 150.0,
    Tissue.FAT: -100.0,
    Tissue.SKIN: 30.0,
    Tissue.MUSCLE: 48.0,
    Tissue.LUNG: -860.0,
    Tissue.BONE_CORTEX: 900.0,
    Tissue.BONE_MARROW: 230.0,
    Tissue.DISC: 85.0,
    Tissue.CSF: 12.0,
    Tissue.GAS: -940.0,
    Tissue.BOWEL_CONTENT: 18.0,
    Tissue.BOWEL_WALL: 38.0,
    Tissue.STOMACH_WALL: 40.0,
    Tissue.KIDNEY_CORTEX: 33.0,
    Tissue.KIDNEY_MEDULLA: 30.0,
    Tissue.RENAL_PELVIS: 8.0,
    Tissue.SPLEEN: 46.0,
    Tissue.PANCREAS: 42.0,
    Tissue.AORTA: 42.0,
    Tissue.IVC: 40.0,
    Tissue.PORTAL_VEIN: 40.0,
    Tissue.HEPATIC_VEIN: 40.0,
    Tissue.LIVER: 58.0,
    Tissue.GALLBLADDER: 10.0,
    Tissue.PORTAL_BRANCH: 40.0,
}

# Per-case jitter (uniform +-) of the unenhanced HU.
BASE_JITTER: dict[Tissue, float] = {
    Tissue.FAT: 12.0, Tissue.MUSCLE: 6.0, Tissue.LIVER: 6.0, Tissue.SPLEEN: 5.0,
    Tissue.BONE_MARROW: 60.0, Tissue.BONE_CORTEX: 150.0, Tissue.KIDNEY_CORTEX: 4.0,
    Tissue.AORTA: 6.0, Tissue.IVC: 6.0, Tissue.PORTAL_VEIN: 6.0, Tissue.HEPATIC_VEIN: 6.0,
    Tissue.BOWEL_CONTENT: 10.0, Tissue.GALLBLADDER: 6.0, Tissue.PANCREAS: 5.0,
}

CURVE_T = np.array([0, 15, 25, 35, 45, 60, 80, 100, 180, 300], dtype=np.float64)
ENHANCEMENT: dict[Tissue, tuple[float, ...]] = {
    Tissue.AORTA: (0, 50, 250, 290, 235, 175, 145, 128, 100, 85),
    Tissue.PORTAL_VEIN: (0, 5, 40, 100, 140, 165, 160, 145, 105, 85),
    Tissue.PORTAL_BRANCH: (0, 4, 35, 90, 130, 155, 152, 140, 102, 83),
    Tissue.HEPATIC_VEIN: (0, 0, 8, 25, 60, 115, 138, 135, 100, 80),
    Tissue.IVC: (0, 5, 25, 55, 80, 110, 130, 125, 100, 80),
    Tissue.LIVER: (0, 2, 8, 18, 30, 48, 58, 58, 45, 35),
    Tissue.SPLEEN: (0, 10, 50, 80, 95, 90, 80, 72, 55, 45),
    Tissue.KIDNEY_CORTEX: (0, 20, 110, 160, 170, 160, 150, 145, 120, 100),
    Tissue.KIDNEY_MEDULLA: (0, 0, 15, 35, 60, 110, 150, 160, 130, 110),
    Tissue.RENAL_PELVIS: (0, 0, 0, 0, 0, 0, 0, 15, 350, 600),
    Tissue.PANCREAS: (0, 10, 60, 90, 80, 70, 60, 55, 40, 30),
    Tissue.MUSCLE: (0, 1, 4, 8, 10, 12, 12, 12, 10, 8),
    Tissue.BOWEL_WALL: (0, 5, 30, 50, 45, 40, 35, 30, 25, 20),
    Tissue.STOMACH_WALL: (0, 5, 35, 55, 50, 45, 38, 32, 25, 20),
    Tissue.SKIN: (0, 1, 5, 10, 12, 14, 14, 13, 10, 8),
}
# Amplitude (HU) of the arciform splenic heterogeneity over time.
SPLEEN_HETEROGENEITY = (0, 10, 35, 42, 30, 12, 4, 2, 0, 0)


def enhancement(tissue: Tissue, t_s: float) -> float:
    """HU added to ``tissue`` at ``t_s`` seconds after bolus start (0 before the bolus)."""
    curve = ENHANCEMENT.get(tissue)
    if curve is None or t_s <= 0:
        return 0.0
    return float(np.interp(t_s, CURVE_T, curve))


def blood_pool_hu(base_blood: float, t_s: float, contrast_factor: float) -> float:
    """Aortic (arterial blood pool) HU, the reference for haemangioma nodules."""
    return base_blood + contrast_factor * enhancement(Tissue.AORTA, t_s)


def spleen_heterogeneity(t_s: float) -> float:
    if t_s <= 0:
        return 0.0
    return float(np.interp(t_s, CURVE_T, SPLEEN_HETEROGENEITY))


def sample_base_hu(rng: np.random.Generator) -> np.ndarray:
    """Per-case unenhanced HU per tissue (index by ``Tissue``)."""
    base = np.array([BASE_HU[t] for t in Tissue], dtype=np.float64)
    for tissue, jitter in BASE_JITTER.items():
        base[tissue] += rng.uniform(-jitter, jitter)
    # Blood is one compartment: vessels share an unenhanced value.
    blood = base[Tissue.AORTA]
    for t in (Tissue.IVC, Tissue.PORTAL_VEIN, Tissue.PORTAL_BRANCH, Tissue.HEPATIC_VEIN):
        base[t] = blood + rng.uniform(-2.0, 2.0)
    return base


def tissue_lut(base_hu: np.ndarray, t_s: float, contrast_factor: float) -> np.ndarray:
    """HU per tissue label at time ``t_s`` (float32, indexable by the label map)."""
    lut = base_hu.astype(np.float64).copy()
    if t_s > 0:
        for tissue in ENHANCEMENT:
            lut[tissue] += contrast_factor * enhancement(tissue, t_s)
    return lut.astype(np.float32)


LIVER_LIKE = (Tissue.LIVER, Tissue.PORTAL_BRANCH, Tissue.HEPATIC_VEIN)
