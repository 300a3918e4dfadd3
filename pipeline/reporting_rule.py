"""Which detector candidates a study reports: one rule for the analyzer and for re-scoring saved runs."""
from __future__ import annotations


def is_reported(detector_confidence: float, p_lesion: float | None, accept_conf: float, p_threshold: float) -> bool:
    """A candidate the detector is sure of on its own (``accept_conf``, its lesion_conf) is reported whatever
    the verifier says, so the verifier can only add lesions; one below it is reported when its p(lesion)
    reaches ``p_threshold``. Without a verifier probability there is nothing to overrule."""
    return p_lesion is None or detector_confidence >= accept_conf or p_lesion >= p_threshold
