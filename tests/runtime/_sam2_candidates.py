"""The FP32 transformers SAM2 reference with the candidates its mask selection chooses between, and the
tie rule that judges a reduced-precision single mask: shared by the per-graph precision tests and the
end-to-end pipeline parity tests (and ``python -m tools.parity``), from ``export.reference`` and
``export.acceptance``."""

from export.acceptance import SAME_OBJECT_BOX_IOU, TIE_PIXELS, single_mask_accepted
from export.reference import sam2_candidates

__all__ = ["SAME_OBJECT_BOX_IOU", "TIE_PIXELS", "sam2_candidates", "single_mask_accepted"]
