"""Read the runtime's preprocessing constants from loaded transformers processors.

Nothing is assumed (not 960, not 1024): sizes, mean/std, rescale factor, text length and the
mask/box frames come from the processor objects of the checkpoint being exported. Settings the
runtime does not implement (another resample filter, a disabled rescale/normalise/pad/resize,
non-square sizes) are refused with a ``UserError`` rather than silently producing other numbers.
"""

from __future__ import annotations

import logging
from typing import Any

from runtime.errors import UserError
from runtime.preprocessing import OwlPreprocessing, Sam2Preprocessing

log = logging.getLogger(__name__)

# PIL.Image.Resampling.BILINEAR == transformers' PILImageResampling.BILINEAR == 2
_BILINEAR = 2
# transformers' "no limit" model_max_length is int(1e30)
_NO_LIMIT = 10**12


def _image_processor(processor: Any, kind: str) -> Any:
    ip = getattr(processor, "image_processor", processor)
    if not hasattr(ip, "size") or not hasattr(ip, "image_mean"):
        raise UserError(f"{kind}: {type(processor).__name__} is not an image processor or a processor that has one")
    return ip


def _get(ip: Any, name: str, kind: str) -> Any:
    v = getattr(ip, name, None)
    if v is None:
        raise UserError(f"{kind}: the processor config has no {name!r}; add it to preprocessor_config.json")
    return v


def _square_side(size: Any, name: str, kind: str) -> int:
    get = size.get if isinstance(size, dict) else (lambda k, d=None: getattr(size, k, d))
    h, w = get("height"), get("width")
    if h is None or w is None:
        raise UserError(f"{kind}: processor {name} {size!r} has no height/width; the runtime needs a fixed square size")
    if int(h) != int(w):
        raise UserError(f"{kind}: processor {name} is {h}x{w}; the runtime supports square sizes only")
    return int(h)


def _check_flags(ip: Any, kind: str, flags: tuple[str, ...]) -> None:
    for flag in flags:
        if getattr(ip, flag, True) is False:
            raise UserError(f"{kind}: the processor has {flag}=False, which the runtime does not implement; "
                            f"export with the checkpoint's default preprocessing")


def _check_resample(ip: Any, kind: str) -> None:
    r = getattr(ip, "resample", _BILINEAR)
    if r is None:
        return  # the backend's default is bilinear
    try:
        value = int(getattr(r, "value", r))
    except (TypeError, ValueError):
        value = -1
    if value != _BILINEAR:
        raise UserError(f"{kind}: the processor resamples with {r!r}; the runtime implements bilinear only")


def _floats3(v: Any, name: str, kind: str) -> tuple[float, float, float]:
    if isinstance(v, (int, float)):
        v = [v] * 3
    t = tuple(float(x) for x in v)
    if len(t) != 3:
        raise UserError(f"{kind}: processor {name} must have 3 values, got {v!r}")
    return t  # type: ignore[return-value]


def owl_preprocessing_from_processor(processor: Any, text_length: int | None = None) -> OwlPreprocessing:
    """``OwlPreprocessing`` from an ``Owlv2Processor`` (or its image processor plus ``text_length``).

    The pad value is 0.0: ``Owlv2ImageProcessor._preprocess`` pads with a hard-coded 0.0 after
    rescaling (it has no config field). The text length is the tokenizer's ``model_max_length``,
    to which the processor pads every prompt (``padding="max_length"``).
    """
    kind = "OWLv2"
    ip = _image_processor(processor, kind)
    _check_flags(ip, kind, ("do_resize", "do_rescale", "do_normalize", "do_pad"))
    _check_resample(ip, kind)
    if text_length is None:
        tok = getattr(processor, "tokenizer", None)
        if tok is None:
            raise UserError(f"{kind}: the processor has no tokenizer to read the text length from; pass the full Owlv2Processor")
        text_length = getattr(tok, "model_max_length", None)
        if not isinstance(text_length, int) or text_length <= 0 or text_length >= _NO_LIMIT:
            raise UserError(f"{kind}: the tokenizer has no model_max_length ({text_length!r}); set it in tokenizer_config.json")
    return OwlPreprocessing(
        image_size=_square_side(_get(ip, "size", kind), "size", kind),
        mean=_floats3(_get(ip, "image_mean", kind), "image_mean", kind),
        std=_floats3(_get(ip, "image_std", kind), "image_std", kind),
        rescale_factor=float(_get(ip, "rescale_factor", kind)),
        pad_value=0.0,
        text_length=int(text_length),
        resample="bilinear",
        anti_alias_blur=True,
    )


def sam2_preprocessing_from_processor(processor: Any, mask_size: int | None = None) -> Sam2Preprocessing:
    """``Sam2Preprocessing`` from a ``Sam2Processor`` (or a bare ``Sam2ImageProcessor``).

    ``coord_size`` is ``Sam2Processor.target_size`` (boxes are mapped to it); without the wrapping
    processor it is the image size, the processor's own default. ``mask_size`` is the model's low-res
    mask side (``sam_mask_size``): the processor's ``mask_size`` only resizes mask *prompts*, which the
    runtime does not take, so where it differs (a processor left at its default 256 on a smaller
    model) it is ignored, with a logged reason, and the model's is recorded.
    """
    kind = "SAM2"
    ip = _image_processor(processor, kind)
    _check_flags(ip, kind, ("do_resize", "do_rescale", "do_normalize"))
    if getattr(ip, "do_pad", None):
        raise UserError(f"{kind}: the processor has do_pad=True, which the runtime does not implement")
    _check_resample(ip, kind)
    image_size = _square_side(_get(ip, "size", kind), "size", kind)
    proc_mask_size = _square_side(_get(ip, "mask_size", kind), "mask_size", kind)
    if mask_size is None:
        mask_size = proc_mask_size
    elif proc_mask_size != mask_size:
        log.warning("SAM2: ignoring the processor's mask_size %d: it resizes mask prompts, which the runtime does "
                     "not take; the decoder's low-res masks are %dx%d (from the model)", proc_mask_size, mask_size,
                     mask_size)
    coord = getattr(processor, "target_size", None)
    return Sam2Preprocessing(
        image_size=image_size,
        mean=_floats3(_get(ip, "image_mean", kind), "image_mean", kind),
        std=_floats3(_get(ip, "image_std", kind), "image_std", kind),
        rescale_factor=float(_get(ip, "rescale_factor", kind)),
        mask_size=mask_size,
        coord_size=int(coord) if coord is not None else image_size,
        mask_threshold=0.0,
        resample="bilinear",
        antialias=True,
    )
