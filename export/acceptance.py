"""Task-level acceptance of an artifact against the PyTorch reference pipeline (numpy only): detections
matched by box IoU, masks by IoU, and SAM2's discrete mask choices that flipped counted apart, each with
the reference's margin. Shared by ``python -m tools.parity`` and the precision acceptance tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from runtime.graphs import BEST_IOU, PRECISION_ACCEPTANCE, STABILITY, PrecisionAcceptance
from runtime.metrics import box_iou, mask_iou

#: FP32 graphs against FP32 PyTorch: only reassociation noise (the pipeline parity tests' thresholds).
FP32_ACCEPTANCE = PrecisionAcceptance(min_cosine=0.9999, min_mask_iou=0.99, min_box_iou=0.99)
FP32_MAX_SCORE_ERROR = 1e-3
#: A detection whose score is this close to the threshold may fall on either side of it: when it is
#: missing on one side it counts as a threshold flip, not a failure (FP32: its score tolerance).
THRESHOLD_BORDER = 0.01
#: Where boxes may move (INT8: ``top_k_labels``), each of the reference's best detections needs a
#: "partner", the detection with the highest box IoU, on the same object, which is what a box IoU of
#: at least this much is taken to mean (the usual detection-matching threshold). The partner's label
#: and mask are then judged against the reference detection's.
SAME_OBJECT_BOX_IOU = 0.5
#: SAM2's single-mask output falls back to the best multimask output when its stability score (an area
#: ratio of the low-res mask) is below a threshold; a score this many low-res pixels from it is a tie.
#: The graph-level precision acceptance states these ties (the same for every precision).
TIE_PIXELS = PRECISION_ACCEPTANCE["fp16"].flip_margins[STABILITY]
#: Two multimask outputs whose predicted IoUs are this close are a tie for the best-of-three choice.
IOU_TIE = PRECISION_ACCEPTANCE["fp16"].flip_margins[BEST_IOU]
assert all((a.flip_margins[STABILITY], a.flip_margins[BEST_IOU]) == (TIE_PIXELS, IOU_TIE)
           for a in PRECISION_ACCEPTANCE.values())


def acceptance(precision: str) -> PrecisionAcceptance:
    """The documented acceptance of ``precision`` (``runtime.graphs.PRECISION_ACCEPTANCE``; FP32 here)."""
    return FP32_ACCEPTANCE if precision == "fp32" else PRECISION_ACCEPTANCE[precision]


def score_tolerance(precision: str) -> float | None:
    """The largest score error accepted (FP32 only; reduced precisions are judged by boxes and labels)."""
    return FP32_MAX_SCORE_ERROR if precision == "fp32" else None


def threshold_border(precision: str) -> float:
    return FP32_MAX_SCORE_ERROR if precision == "fp32" else THRESHOLD_BORDER


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of corresponding rows (each flattened)."""
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# --- detections -------------------------------------------------------------------------------------

@dataclass
class DetectionMatch:
    """Reference detections paired with the artifact's: ``ref_rows[i]`` with ``got_rows[i]``."""

    judged: int  # reference detections judged: all of them, or the k best
    ref_rows: np.ndarray
    got_rows: np.ndarray
    box_iou: np.ndarray  # per pair
    score_error: np.ndarray  # per pair, |got - ref|
    labels_agree: np.ndarray  # per pair
    missing: np.ndarray  # reference rows without an acceptable partner
    extra: np.ndarray  # artifact rows no reference detection explains (one-to-one matching only)
    at_threshold: int  # of those, detections within the border of the threshold: accepted flips
    passed: bool
    rule: str


def match_detections(ref: tuple[np.ndarray, np.ndarray, np.ndarray], got: tuple[np.ndarray, np.ndarray, np.ndarray],
                     acc: PrecisionAcceptance, threshold: float, border: float,
                     max_score_error: float | None = None) -> DetectionMatch:
    """``ref``/``got``: (boxes, scores, labels). With ``acc.min_box_iou`` one to one: same label, box IoU
    at least that, pairs taken by decreasing IoU; a detection left over on either side passes only if
    its score is within ``border`` of ``threshold``. With ``acc.top_k_labels`` the reference's k best
    detections each need a partner of the same label at box IoU >= ``SAME_OBJECT_BOX_IOU``."""
    rb, rs, rl = ref
    gb, gs, gl = got
    none = np.zeros(0, np.int64)
    if acc.min_box_iou is not None:
        iou = np.where(rl[:, None] == gl[None, :], box_iou(rb, gb), 0.0)
        pairs = sorted(((iou[i, j], i, j) for i, j in zip(*np.nonzero(iou >= acc.min_box_iou))), reverse=True)
        used_ref: set[int] = set()
        used_got: set[int] = set()
        for _, i, j in pairs:
            if i not in used_ref and j not in used_got:
                used_ref.add(i)
                used_got.add(j)
        ref_rows = np.array(sorted(used_ref), np.int64)
        partner = {i: j for _, i, j in pairs if i in used_ref and j in used_got}
        got_rows = np.array([partner[i] for i in ref_rows], np.int64)
        pair_iou = iou[ref_rows, got_rows]
        missing = np.setdiff1d(np.arange(len(rb)), ref_rows)
        extra = np.setdiff1d(np.arange(len(gb)), got_rows)
        near = np.concatenate([np.abs(rs[missing] - threshold), np.abs(gs[extra] - threshold)]) <= border
        at_threshold, passed = int(near.sum()), bool(near.all())
        rule = f"one to one, same label, box IoU >= {acc.min_box_iou} (left over: only within {border} of the threshold)"
    else:
        top = np.argsort(-rs, kind="stable")[: acc.top_k_labels]
        if len(gb):
            iou = box_iou(rb[top], gb)
            ref_rows, got_rows = top, iou.argmax(axis=1)
            pair_iou = iou[np.arange(len(top)), got_rows]
            missing = top[(pair_iou < SAME_OBJECT_BOX_IOU) | (gl[got_rows] != rl[top])]
        else:
            ref_rows, got_rows, pair_iou, missing = none, none, np.zeros(0), top
        extra, at_threshold, passed = none, 0, len(missing) == 0
        rule = (f"the {acc.top_k_labels} best reference detections each have a partner of their label at box IoU "
                f">= {SAME_OBJECT_BOX_IOU}")
    errors = np.abs(gs[got_rows].astype(np.float64) - rs[ref_rows])
    if max_score_error is not None and len(errors) and errors.max() > max_score_error:
        passed = False
    judged = len(rb) if acc.min_box_iou is not None else min(len(rb), acc.top_k_labels)
    return DetectionMatch(judged, ref_rows, got_rows, pair_iou, errors, gl[got_rows] == rl[ref_rows], missing, extra,
                          at_threshold, passed, rule)


def compare_detections(ref, got, top_k: int = 5) -> dict[str, Any]:
    """Agreement statistics, not a verdict: every reference detection matched to the same-label
    detection of ``got`` with the highest box IoU; top-k: labels of the k best reference detections
    against those of their best-IoU counterparts. ``ref``/``got``: (boxes, scores, labels)."""
    rb, rs, rl = ref
    gb, gs, gl = got
    out: dict[str, Any] = {"ref": int(len(rb)), "got": int(len(gb))}
    if len(rb) == 0 or len(gb) == 0:
        out.update(min_iou=1.0 if len(rb) == len(gb) else 0.0, matched_095=float(len(rb) == len(gb)),
                   topk_agree=1.0 if len(rb) == len(gb) else 0.0)
        return out
    iou = box_iou(rb, gb)
    same = np.where(rl[:, None] == gl[None, :], iou, 0.0)
    best = same.max(axis=1)
    out["min_iou"] = float(best.min())
    out["matched_095"] = float((best >= 0.95).mean())
    top = np.argsort(-rs, kind="stable")[:top_k]
    partner = iou[top].argmax(axis=1)
    out["topk_agree"] = float(np.mean([gl[p] == rl[t] and iou[t, p] >= 0.5 for t, p in zip(top, partner)]))
    return out


# --- masks and SAM2's discrete choices ---------------------------------------------------------------

@dataclass(frozen=True)
class ChoiceRule:
    """One of SAM2's discrete mask choices, as ``export.reference.sam2_candidates`` describes it: the
    candidate the reference chose, the one a perturbation can flip to, the reference's margin to the
    decision boundary, and the margin up to which a flip is accepted (a tie, not a broken graph).
    ``nested`` is a choice made on one branch of this one (``on_nested_branch``: where the reference
    took that branch): it can flip at its own tie where the branch is taken, or reached by a flip."""

    name: str
    chosen: str
    other: Callable[[dict[str, np.ndarray]], np.ndarray]
    margin: str
    epsilon: float
    unit: str
    nested: "ChoiceRule | None" = None
    on_nested_branch: Callable[[dict[str, np.ndarray]], np.ndarray] | None = None


#: The multimask decoder: the best of three by predicted IoU.
BEST_OF_THREE = ChoiceRule("best of three", "multi", lambda ref: ref["multi_second"], "multi_margin", IOU_TIE,
                           "predicted IoU")
#: The single-mask decoder: SAM2's stability fallback to the best multimask output, which is itself
#: a best-of-three choice.
STABILITY_FALLBACK = ChoiceRule(
    "stability fallback", "chosen",
    lambda ref: np.where(ref["picked_single"][:, None, None], ref["multi"], ref["single"]),
    "margin_pixels", TIE_PIXELS, "low-res pixels",
    nested=BEST_OF_THREE, on_nested_branch=lambda ref: ~np.asarray(ref["picked_single"], bool))


def choice_rule(multimask: bool) -> ChoiceRule:
    return BEST_OF_THREE if multimask else STABILITY_FALLBACK


@dataclass
class MaskCheck:
    iou: np.ndarray  # with the reference's choice
    other_iou: np.ndarray  # with the candidate a flip leads to (of the flips possible, the closest)
    margin: np.ndarray  # the reference's margin to that flip's boundary
    flipped: np.ndarray  # matches that candidate instead of the choice
    accepted: np.ndarray
    choice: np.ndarray  # per mask: the name of the choice a flip there flipped (rule's or its nested one)
    rule: ChoiceRule = field(repr=False)

    @property
    def passed(self) -> bool:
        return bool(self.accepted.all())

    def flips(self) -> list[dict[str, Any]]:
        """Each choice that flipped: which mask, which choice, the reference's margin, whether that is a tie."""
        return [{"mask": int(i), "choice": str(self.choice[i]), "margin": float(self.margin[i]),
                 "accepted": bool(self.accepted[i])} for i in np.flatnonzero(self.flipped)]


def check_masks(got: np.ndarray, ref: dict[str, np.ndarray], min_iou: float, rule: ChoiceRule) -> MaskCheck:
    """``got`` (N, H, W) bool against the reference's candidates ``ref`` (rows in the same order): a mask
    passes with IoU >= ``min_iou`` with the reference's choice, or, where the reference's margin is at
    most ``rule.epsilon``, with its other candidate (a flip of a tie); likewise for ``rule.nested`` on
    its branch, where the reference took that branch or was at a tie of ``rule``."""
    iou = mask_iou(got, ref[rule.chosen])
    other = mask_iou(got, rule.other(ref))
    margin = np.asarray(ref[rule.margin], np.float64)
    epsilon = np.full(len(iou), rule.epsilon)
    choice = np.full(len(iou), rule.name, dtype=object)
    if rule.nested is not None:  # of the two flips, the one that explains the mask: a tie if either is
        n = rule.nested
        reached = rule.on_nested_branch(ref) | (margin <= rule.epsilon)
        n_other, n_margin = np.where(reached, mask_iou(got, n.other(ref)), 0.0), np.asarray(ref[n.margin], np.float64)
        tie, n_tie = (other >= min_iou) & (margin <= epsilon), (n_other >= min_iou) & (n_margin <= n.epsilon)
        use = (n_tie & ~tie) | ((n_tie == tie) & (n_other > other))
        other, margin = np.where(use, n_other, other), np.where(use, n_margin, margin)
        epsilon, choice = np.where(use, n.epsilon, epsilon), np.where(use, n.name, choice)
    flipped = (iou < min_iou) & (other >= min_iou)
    accepted = (iou >= min_iou) | (flipped & (margin <= epsilon))
    return MaskCheck(iou, other, margin, flipped, accepted, choice, rule)


def single_mask_accepted(got: np.ndarray, ref: dict[str, np.ndarray], min_iou: float):
    """Per mask of the single-mask decoder: IoU >= ``min_iou`` with the reference's choice, or, where the
    reference's stability score is within ``TIE_PIXELS`` of SAM2's threshold, with its other candidate.
    Returns (ok, iou, other)."""
    check = check_masks(got, ref, min_iou, STABILITY_FALLBACK)
    return check.accepted, check.iou, check.other_iou
