"""Vendor-style series descriptions, kernels and contrast agents, varied per case.

Descriptions exercise the node's phase logic: most name the phase in one of many styles, some
say nothing useful, so timing and contrast attributes must carry the decision.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .spec import ContrastPhase


@dataclass(frozen=True)
class VendorStyle:
    name: str
    model: str
    kernels: tuple[str, ...]
    thickness_format: str  # how this vendor prints slice thickness
    descriptions: dict[ContrastPhase, tuple[str, ...]]


_UNINFORMATIVE = ("Abdomen {thk} I26f 3", "Body {thk}", "AXIAL", "Recon 2", "Helical {thk}mm", "ABD/PEL {thk}",
                  "Routine Abdomen", "Thin {thk}", "")

VENDORS: tuple[VendorStyle, ...] = (
    VendorStyle("ge", "SYNTH-CT 64 (GE-style)", ("STANDARD", "SOFT"), "{:g}", {
        ContrastPhase.NC: ("NON CONTRAST", "Plain {thk}mm", "WO {thk}mm", "NC {thk}mm"),
        ContrastPhase.AP: ("ART {thk}mm", "ARTERIAL", "Late Arterial {thk}mm", "AP"),
        ContrastPhase.PVP: ("PORTAL VENOUS", "PV {thk}mm", "VENOUS {thk}mm", "Portal"),
        ContrastPhase.DELAYED: ("Delayed 3min", "DELAY {thk}mm", "Equilibrium", "5 MIN DELAY"),
    }),
    VendorStyle("siemens", "SYNTH-CT Force (Siemens-style)", ("B30f", "Br40d", "I30f"), "{:.1f}", {
        ContrastPhase.NC: ("Nativ {thk} B30f", "NON CONTRAST", "Plain", "Abdomen nativ {thk}"),
        ContrastPhase.AP: ("Arterial {thk} B30f", "ART {thk} Br40d", "AP", "Arterial Phase"),
        ContrastPhase.PVP: ("PV {thk} B30f", "Venous {thk} Br40d", "Venous", "PVP {thk}"),
        ContrastPhase.DELAYED: ("Delayed {thk} B30f", "Spaet {thk}", "Equilibrium", "Delayed 3min"),
    }),
    VendorStyle("philips", "SYNTH-CT iQon (Philips-style)", ("B", "C"), "{:.1f}", {
        ContrastPhase.NC: ("Non-Contrast", "Plain", "Pre Contrast", "Unenhanced"),
        ContrastPhase.AP: ("Arterial Phase", "Arterial", "Late Arterial Phase", "ART"),
        ContrastPhase.PVP: ("Portal Venous Phase", "PORTAL VENOUS", "Venous Phase", "PV"),
        ContrastPhase.DELAYED: ("Delayed Phase", "Equilibrium Phase", "Late Phase", "Delayed 3min"),
    }),
    VendorStyle("canon", "SYNTH-CT Aquilion (Canon-style)", ("FC08", "FC18"), "{:.1f}", {
        ContrastPhase.NC: ("PLAIN", "NON CONTRAST", "Plain {thk}", "PRE"),
        ContrastPhase.AP: ("AP", "ARTERIAL {thk}", "EARLY", "Art. {thk}mm"),
        ContrastPhase.PVP: ("PORTAL VENOUS", "PVP", "PORTAL {thk}", "VEN 70s"),
        ContrastPhase.DELAYED: ("DELAYED", "EQ {thk}mm", "Delay 180s", "EQUILIBRIUM"),
    }),
)

AGENTS: tuple[tuple[str, float], ...] = (
    ("Iohexol 350", 350.0), ("OMNIPAQUE 350", 350.0), ("Iopamidol 370", 370.0), ("ULTRAVIST 370", 370.0),
    ("Iodixanol 320", 320.0), ("Iomeprol 400", 400.0), ("Contrast", 300.0),
)


def describe(vendor: VendorStyle, phase: ContrastPhase, thickness_mm: float, series_number: int,
             rng: np.random.Generator, uninformative_prob: float = 0.15) -> str:
    """A series description for ``phase``; sometimes one that says nothing about the phase."""
    thk = vendor.thickness_format.format(thickness_mm)
    if rng.random() < uninformative_prob:
        template = str(rng.choice(_UNINFORMATIVE + (f"Series {series_number}",)))
    else:
        template = str(rng.choice(vendor.descriptions[phase]))
    return template.format(thk=thk)[:64]
