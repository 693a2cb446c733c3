"""The parity gates refuse graphs that are wrong by a stated amount (negative tests).

FP32 export parity (``runtime.graphs`` tolerances, ``export.parity``) must refuse a 1 % relative error,
a 0.01 absolute error and, on outputs small next to their ``atol``, a cosine of about 0.995; the FP16 and
INT8 cosine gates (``PRECISION_ACCEPTANCE``) must refuse cosines of about 0.9975 and 0.94. These amounts
are stated here, not derived from the tolerances, so that a tolerance loosened 1000x fails these tests.
The graphs are the tiny artifact's, perturbed by ``_perturb.perturb_outputs``.
"""

from __future__ import annotations

import numpy as np
import pytest

from _perturb import perturb_outputs
from export.parity import ParityError, check_export_parity, compare_output
from export.precision import precision_parity
from runtime.graphs import GRAPHS, OWL_HEAD, OWL_IMAGE, PRECISION_ACCEPTANCE

OUTSIDE = "values outside atol + rtol*|ref|"
RELATIVE_ERROR = 0.01  # y * 1.01
ABSOLUTE_ERROR = 0.01  # y + 0.01
# y * (1 + w sin(1000 y)): cosine ~ 1 / sqrt(1 + w^2 / 2) on outputs of more than a few values
WOBBLE = {"fp16": 0.1, "int8": 0.5}  # cosine ~0.9975 and ~0.94
IMAGE_GRAPHS = [name for name, spec in GRAPHS.items() if not spec.video]


@pytest.fixture(scope="module")
def exports(tiny_checkpoints):
    """The tiny checkpoints' graph exports (torch modules and their parity inputs), by name."""
    from export.models import load_owl, load_sam
    from export.owl import owl_graph_exports, owl_sizes
    from export.pixels import image_ranges, pixel_graph_exports, pixel_sizes
    from export.preprocessing import owl_preprocessing_from_processor, sam2_preprocessing_from_processor
    from export.sam2 import sam2_graph_exports, sam2_sizes
    from runtime.graphs import DYNAMIC_DIMS

    owl, sam = load_owl(str(tiny_checkpoints.owl)), load_sam(str(tiny_checkpoints.sam))
    sizes = {**owl_sizes(owl), **sam2_sizes(sam), **pixel_sizes()}
    owl_pre = owl_preprocessing_from_processor(owl.processor)
    sam_pre = sam2_preprocessing_from_processor(sam.processor, mask_size=sizes["sam_mask_size"])
    pixels = pixel_graph_exports(owl_pre, sam_pre, sizes, image_ranges(DYNAMIC_DIMS, owl_pre, sam_pre))
    return {g.spec.name: g for g in owl_graph_exports(owl, sizes) + sam2_graph_exports(sam, sizes) + pixels}


# --- FP32 export parity ---------------------------------------------------------------------------
@pytest.mark.parametrize("graph", list(GRAPHS))
def test_every_output_tolerance_refuses_the_stated_errors(graph):
    """Per output of every graph (video ones too), on synthetic values: order-1 values off by 1 % or by
    0.01 fail the elementwise check; values of the size of ``atol`` with 10 % noise (inside atol) fail
    the cosine; an error of 1e-5 relative passes."""
    rng = np.random.default_rng(0)
    for t in GRAPHS[graph].outputs:
        tol = t.tolerance
        check = lambda ref, got: compare_output(graph, {}, t.name, ref, got, tol)  # noqa: E731
        if t.dtype == "bool":  # decisions (sam2_masks): equal passes, one flipped pixel of 1000 fails
            b = rng.random(1000) < 0.5
            assert check(b, b.copy()).passed, t.name
            flipped = b.copy()
            flipped[0] = ~flipped[0]
            assert not check(b, flipped).passed, t.name
            continue
        r = rng.normal(0.0, 1.0, 1000).astype(np.float32)
        assert check(r, r * np.float32(1 + 1e-5)).passed, t.name
        for got in (r * np.float32(1 + RELATIVE_ERROR), r + np.float32(ABSOLUTE_ERROR)):
            row = check(r, got)
            assert not row.passed and row.problem == OUTSIDE, (t.name, row)
        small = r * np.float32(tol.atol)
        row = check(small, small + np.float32(0.1 * tol.atol) * rng.normal(0.0, 1.0, 1000).clip(-3, 3).astype(np.float32))
        assert not row.passed and row.problem.startswith("cosine") and 0.99 < row.cosine < 0.999, (t.name, row)


@pytest.mark.parametrize("graph", IMAGE_GRAPHS)
def test_export_parity_refuses_a_graph_off_by_the_stated_errors(exports, tiny_artifact, tmp_path, graph):
    """Every output (and a decoder's candidates before its choices) scaled by 1.01, then shifted by 0.01:
    every row of the parity check fails."""
    names = GRAPHS[graph].with_candidates().output_names
    errors = (("relative", dict(scale=1 + RELATIVE_ERROR)), ("absolute", dict(offset=ABSOLUTE_ERROR)))
    if any(t.dtype == "bool" for t in GRAPHS[graph].outputs):
        errors = (("negated", dict(negate=True)),)  # decisions: every one flipped
    for kind, kw in errors:
        path = perturb_outputs(tiny_artifact / f"{graph}.onnx", tmp_path / f"{kind}.onnx", names, **kw)
        rows = check_export_parity(exports[graph], path)
        assert {r.output for r in rows} == set(names)
        assert all(not r.passed and r.problem == OUTSIDE for r in rows), [(r.output, r.dims, r.problem) for r in rows]


def test_export_build_refuses_a_graph_that_fails_parity(tiny_checkpoints, tmp_path, monkeypatch, capsys):
    """Through ``export.build`` (the class head only, for speed): parity FAILED, nothing written."""
    import export.graph_export as graph_export
    import export.owl
    import export.pixels
    import export.sam2
    from export.build import main

    real_owl, real_export = export.owl.owl_graph_exports, graph_export.export_to_onnx
    monkeypatch.setattr(export.owl, "owl_graph_exports",
                        lambda *a: [g for g in real_owl(*a) if g.spec.name == OWL_HEAD.name])
    monkeypatch.setattr(export.sam2, "sam2_graph_exports", lambda *a: [])
    monkeypatch.setattr(export.pixels, "pixel_graph_exports", lambda *a: [])

    def export_off_by_one_percent(graph, path, seed=0):
        files = real_export(graph, path, seed)
        perturb_outputs(files[0], files[0], graph.spec.output_names, scale=1 + RELATIVE_ERROR)
        return files

    monkeypatch.setattr(graph_export, "export_to_onnx", export_off_by_one_percent)
    out = tmp_path / "out"
    with pytest.raises(ParityError, match="parity checks failed"):
        main(["--owl-model", str(tiny_checkpoints.owl), "--sam-model", str(tiny_checkpoints.sam), "--out", str(out),
              "--fp32", "--engines", "skip"])
    assert "FAILED" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [], "nothing written, no staging directory left"


# --- FP16 / INT8 cosine gates -----------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_precision_gate_refuses_a_graph_below_its_cosine(exports, tiny_artifact, tmp_path, precision):
    """The FP32 ``owl_image`` with one output wobbled stands in for a precision graph: that output's rows
    fail the precision's cosine gate, the untouched outputs' rows pass."""
    from export.precision import _random_runs

    graph, victim = exports[OWL_IMAGE.name], OWL_IMAGE.output_names[0]
    path = perturb_outputs(tiny_artifact / "owl_image.onnx", tmp_path / "wobbled.onnx", [victim], wobble=WOBBLE[precision])
    rows, flips = precision_parity(graph, path, precision, _random_runs(graph, 0), PRECISION_ACCEPTANCE[precision])
    assert flips == []  # owl_image makes no discrete choice
    bad = [r for r in rows if r.output == victim]
    assert bad and all(not r.passed and r.problem.startswith("cosine") for r in bad), bad
    assert all(r.passed for r in rows if r.output != victim)


def test_export_build_refuses_precision_graphs_below_their_cosine(tiny_checkpoints, calibration_dir, tmp_path,
                                                                  monkeypatch, capsys):
    """Through ``export.build --fp16 --int8`` (``owl_image`` only): the FP16 graph wobbled to cosine ~0.9975
    and both INT8 ones (TensorRT's and ONNX Runtime's own) to ~0.94 are all refused, by name; nothing is
    written."""
    import export.ort_flavour as ort_flavour
    import export.owl
    import export.precision as precision
    import export.sam2
    from export.build import main

    real_owl, real_fp16, real_int8 = export.owl.owl_graph_exports, precision.convert_fp16, precision.quantize_int8
    monkeypatch.setattr(export.owl, "owl_graph_exports",
                        lambda *a: [g for g in real_owl(*a) if g.spec.name == OWL_IMAGE.name])
    monkeypatch.setattr(export.sam2, "sam2_graph_exports", lambda *a: [])
    monkeypatch.setattr(export.pixels, "pixel_graph_exports", lambda *a: [])

    def wobbled(real, p):
        def convert(src, dst, spec, *args, **kwargs):
            result = real(src, dst, spec, *args, **kwargs)
            perturb_outputs(result.files[0], result.files[0], spec.output_names[:1], wobble=WOBBLE[p])
            return result
        return convert

    monkeypatch.setattr(precision, "convert_fp16", wobbled(real_fp16, "fp16"))
    monkeypatch.setattr(precision, "quantize_int8", wobbled(real_int8, "int8"))
    real_ort = ort_flavour.quantize_for_onnxruntime

    def ort_wobbled(src, dst, spec, *args, **kwargs):
        result, found = real_ort(src, dst, spec, *args, **kwargs)
        perturb_outputs(result.files[0], result.files[0], spec.output_names[:1], wobble=WOBBLE["int8"])
        return result, found

    monkeypatch.setattr(ort_flavour, "quantize_for_onnxruntime", ort_wobbled)
    out = tmp_path / "out"
    with pytest.raises(ParityError, match="precision parity checks failed") as e:
        main(["--owl-model", str(tiny_checkpoints.owl), "--sam-model", str(tiny_checkpoints.sam), "--out", str(out),
              "--fp16", "--int8", "--calib-dir", str(calibration_dir), "--calib-count", "4", "--engines", "skip"])
    assert all(f"owl_image {p}" in str(e.value) for p in ("fp16", "int8", "(ort) int8")), str(e.value)
    assert "FAILED" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [], "nothing written, no staging directory left"
