"""Calibration for INT8: image sets -> per-graph calibration inputs -> Q/DQ graphs, ranges cached.

* :mod:`calibration.images` reads a folder of calibration images (JPEG/PNG/…, any size, searched
  recursively), skipping unreadable files with a count and failing when too few remain;
* :mod:`calibration.inputs` turns them into the inputs of every graph with the runtime's own
  preprocessing; downstream graphs (``owl_head``, the SAM2 decoders) get theirs by running the
  upstream FP32 graphs in ONNX Runtime, boxes for the decoders from OWLv2 detections topped up with
  random plausible boxes;
* :mod:`calibration.video` records the inputs of SAM2's video graphs by running the FP32 tracker
  over short clips made of the calibration images (a slow camera move into each);
* :mod:`calibration.cache` keeps the activation scales of each graph in the artifact
  (``calibration/<graph>.json``), keyed by the graph's sha256, its upstream graphs' and the
  calibration set's, so that a re-run with the same inputs reuses them;
* ``python -m calibration.make_set --from VIDEO|DIR --out DIR [--count N]`` makes a calibration
  folder from a video or from the images a user has.

The Q/DQ graphs themselves are written by :func:`export.precision.quantize_int8`, which the export
step drives with these inputs. Imports go downward only: ``export -> calibration -> runtime``; this
package needs neither torch nor ModelOpt.
"""

from calibration.images import CalibrationImages, MIN_CALIBRATION_IMAGES, DEFAULT_CALIBRATION_COUNT, read_calibration_images

__all__ = ["CalibrationImages", "read_calibration_images", "MIN_CALIBRATION_IMAGES", "DEFAULT_CALIBRATION_COUNT"]
