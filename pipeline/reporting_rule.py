"""Which detector candidates a study reports: one rule for the analyzer and for re-scoring saved runs."""
from __future__ import annotations


def is_reported(detector_confidence: float, p_lesion: float | None, accept_conf: float, p_threshold: float,
                p_confident: float = 0.0) -> bool:
    """Two bars for the verifier's p(lesion): a candidate the detector is sure of (``accept_conf``) needs only
    ``p_confident``, one below it needs ``p_threshold``. With ``p_confident`` 0 the verifier can only add
    lesions to what the detector reports alone; above 0 it can also veto a confident candidate it scores
    far below a lesion. Without a verifier probability there is nothing to overrule."""
    if p_lesion is None:
        return True
    return p_lesion >= p_threshold or (detector_confidence >= accept_conf and p_lesion >= p_confident)
