"""Lesion classification: the LiLNet network, its checkpoints and its input preprocessing.

- ``lilnet``: the network (ResNet backbone, masked layer3/layer4 heads, AG aggregation).
- ``checkpoints``: load/save in the published ``Time_*.pth.tar`` layout, sha256-checked.
- ``preprocess``: 224x224 crops around detections and the classifier input transform.

Submodules are imported explicitly (``from pipeline.classify.lilnet import LiLNet``) so that
importing the package does not pull in torch for callers that only need one part.
"""
