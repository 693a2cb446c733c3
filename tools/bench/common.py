"""What the measuring scripts share: the models they measure (released architectures with random
weights, the tiny test architecture, or local checkpoints), timers, the machine and command-line
record of a result, and result files written atomically."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from runtime.errors import UserError
from tools.outputs import write_atomic

# --- architectures --------------------------------------------------------------------------------
# google/owlv2-base-patch16-ensemble: CLIP B/16 towers, the vision tower at 960 px (3600 patches),
# 16-token queries. Owlv2Config's defaults are these towers at 768 px and patch 32.
OWL_B16 = "owlv2-b16"
_OWL_B16 = dict(
    text=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
              max_position_embeddings=16),
    vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                image_size=960, patch_size=16),
    projection_dim=512,
)
#: The architecture of ``python -m tools.tiny_checkpoints``: checks a measuring command in seconds.
TINY = "tiny"
OWL_ARCHES = (OWL_B16, TINY)

# Meta's sam2.1_hiera_{t,s}.yaml as transformers' Sam2HieraDetConfig spells it (trunk embed_dim 96,
# num_heads 1 doubling per stage, window_spec [8, 4, 14, 7], window_pos_embed_bkg_spatial_size [7, 7];
# neck d_model 256 over [768, 384, 192, 96], top-down levels [2, 3]; image 1024). The two sizes differ
# in blocks per stage and global-attention blocks; the prompt encoder and mask decoder are those of
# every SAM2.1 size. Everything is spelled out, so that a change of transformers' defaults cannot
# silently change the model measured.
_HIERA_BLOCKS: dict[str, dict[str, Any]] = {
    "hiera-small": dict(blocks_per_stage=[1, 2, 11, 2], global_attention_blocks=[7, 10, 13]),
    "hiera-tiny": dict(blocks_per_stage=[1, 2, 7, 2], global_attention_blocks=[5, 7, 9]),
}
SAM_ARCHES = (*_HIERA_BLOCKS, TINY)
SAM_IMAGE_SIZE = 1024
_HIERA_BACKBONE = dict(
    model_type="sam2_hiera_det_model", hidden_size=96, num_attention_heads=1, num_channels=3,
    image_size=[SAM_IMAGE_SIZE, SAM_IMAGE_SIZE], patch_kernel_size=[7, 7], patch_stride=[4, 4], patch_padding=[3, 3],
    query_stride=[2, 2], window_positional_embedding_background_size=[7, 7], num_query_pool_stages=3,
    embed_dim_per_stage=[96, 192, 384, 768], num_attention_heads_per_stage=[1, 2, 4, 8],
    window_size_per_stage=[8, 4, 14, 7], mlp_ratio=4.0, hidden_act="gelu", layer_norm_eps=1e-6,
)
_HIERA_VISION = dict(
    model_type="sam2_vision_model", backbone_channel_list=[768, 384, 192, 96],
    backbone_feature_sizes=[[256, 256], [128, 128], [64, 64]], fpn_hidden_size=256, fpn_kernel_size=1, fpn_stride=1,
    fpn_padding=0, fpn_top_down_levels=[2, 3], num_feature_levels=3, hidden_act="gelu", layer_norm_eps=1e-6,
)
_SAM_PROMPT = dict(hidden_size=256, image_size=SAM_IMAGE_SIZE, patch_size=16, mask_input_channels=16)
_SAM_DECODER = dict(
    hidden_size=256, mlp_dim=2048, num_hidden_layers=2, num_attention_heads=8, attention_downsample_rate=2,
    num_multimask_outputs=3, iou_head_depth=3, iou_head_hidden_dim=256, dynamic_multimask_via_stability=True,
    dynamic_multimask_stability_delta=0.05, dynamic_multimask_stability_thresh=0.98,
)


def _sam_parts(arch: str) -> dict[str, Any]:
    if arch not in _HIERA_BLOCKS:
        raise ValueError(f"unknown SAM2 architecture {arch!r}; choose from {', '.join(SAM_ARCHES)}")
    vision = dict(_HIERA_VISION, backbone_config=dict(_HIERA_BACKBONE, **_HIERA_BLOCKS[arch]))
    return dict(vision_config=vision, prompt_encoder_config=dict(_SAM_PROMPT), mask_decoder_config=dict(_SAM_DECODER))


def owl_config(arch: str, tokenizer: Any = None):
    """The ``Owlv2Config`` of ``arch``; with ``tokenizer``, its vocabulary and special tokens (else the
    released CLIP vocabulary of 49408 tokens, whose ids the tiny BPE's all are)."""
    from transformers import Owlv2Config

    if arch == TINY:
        from tools.tiny_checkpoints import build_tokenizer, owl_config as tiny_owl_config

        tok = tokenizer or build_tokenizer()
        return tiny_owl_config(len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    if arch != OWL_B16:
        raise ValueError(f"unknown OWLv2 architecture {arch!r}; choose from {', '.join(OWL_ARCHES)}")
    text = dict(_OWL_B16["text"])
    if tokenizer is not None:
        text.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return Owlv2Config(text_config=text, vision_config=_OWL_B16["vision"], projection_dim=_OWL_B16["projection_dim"])


def sam2_config(arch: str):
    """The ``Sam2Config`` (image model) of ``facebook/sam2.1-<arch>``, or of the tiny architecture."""
    if arch == TINY:
        from tools.tiny_checkpoints import sam_image_config

        return sam_image_config()
    from transformers import Sam2Config

    return Sam2Config(**_sam_parts(arch))


def sam2_video_config(arch: str):
    """The ``Sam2VideoConfig`` of ``arch``: its image model and transformers' memory modules, which
    are those of every SAM2.1 size."""
    if arch == TINY:
        from tools.tiny_checkpoints import sam_config

        return sam_config()
    from transformers import Sam2VideoConfig

    image = sam2_config(arch)
    return Sam2VideoConfig(vision_config=image.vision_config.to_dict(), prompt_encoder_config=_SAM_PROMPT,
                           mask_decoder_config=_SAM_DECODER)


def owl_processor(config: Any, tokenizer: Any = None):
    """An ``Owlv2Processor`` at the vision tower's image size (the tiny BPE tokenizer by default)."""
    from transformers import Owlv2ImageProcessor, Owlv2Processor

    from tools.tiny_checkpoints import build_tokenizer

    side = int(config.vision_config.image_size)
    return Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": side, "width": side}),
                          tokenizer=tokenizer or build_tokenizer())


def sam2_processor(config: Any, video: bool = False):
    """``Sam2Processor`` (or with ``video`` ``Sam2VideoProcessor``) at the model's image size, its
    low-res masks 4x the embedding's side (256 at 1024 px), as the released processors."""
    from transformers import Sam2ImageProcessor, Sam2Processor

    side = int(config.vision_config.backbone_config.image_size[0])
    mask = 4 * int(config.vision_config.backbone_feature_sizes[-1][0])
    image = Sam2ImageProcessor(size={"height": side, "width": side}, mask_size={"height": mask, "width": mask})
    if not video:
        return Sam2Processor(image_processor=image, target_size=side)
    from transformers import Sam2VideoProcessor, Sam2VideoVideoProcessor

    frames = Sam2VideoVideoProcessor(size={"height": side, "width": side})
    return Sam2VideoProcessor(image_processor=image, video_processor=frames, target_size=side)


INITS = ("order1", "hf")


def _initialised(model: Any, init: str, seed: int) -> Any:
    """``init="order1"`` re-initialises the weights as the tiny checkpoints are (PyTorch's default
    initialisers, outputs of order 1); ``"hf"`` keeps transformers' std-0.02 init, under which a deep
    random ViT's activations grow to ~1e4 and its outputs are cancellations of huge intermediates."""
    from tools.tiny_checkpoints import reinitialise

    if init == "order1":
        reinitialise(model, seed)
    elif init != "hf":
        raise ValueError(f"unknown init {init!r}; choose from {', '.join(INITS)}")
    return model.eval()


def random_owl(arch: str, seed: int = 0, init: str = "order1", tokenizer: Any = None):
    """A ``LoadedModel`` of ``Owlv2ForObjectDetection`` with random weights of architecture ``arch``."""
    import torch
    from transformers import Owlv2ForObjectDetection

    from export.models import LoadedModel

    config = owl_config(arch, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _initialised(Owlv2ForObjectDetection(config), init, seed)
    return LoadedModel("owl", f"random {arch}", model, owl_processor(config, tokenizer), "random", None)


def random_sam(arch: str, seed: int = 0, init: str = "order1", video: bool = False):
    """A ``LoadedModel`` of ``Sam2Model`` (``video``: ``Sam2VideoModel``) with random weights of
    architecture ``arch``, and its ``Sam2Processor``."""
    import torch
    from transformers import Sam2Model, Sam2VideoModel

    from export.models import LoadedModel

    config = sam2_video_config(arch) if video else sam2_config(arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _initialised((Sam2VideoModel if video else Sam2Model)(config), init, seed)
    return LoadedModel("sam", f"random {arch}", model, sam2_processor(sam2_config(arch)), "random", None)


def load_model(family: str, arch: str | None, model_dir: str | None, seed: int = 0, init: str = "order1"):
    """A ``LoadedModel`` of ``family`` ("owl" or "sam"): the local checkpoint ``model_dir``, or random
    weights of ``arch``."""
    from export.models import load_owl, load_sam

    if model_dir:
        return (load_owl if family == "owl" else load_sam)(model_dir)
    return (random_owl if family == "owl" else random_sam)(arch, seed, init)


def checkpoint_biases(model: Any) -> None:
    """The biases the tiny checkpoints set after re-initialising (OWLv2's class-head shift and scale,
    SAM2's object score, one Fourier matrix for image and prompt positions): scores on both sides of
    the threshold and non-empty masks, as trained models give."""
    import torch

    from tools.tiny_checkpoints import OWL_LOGIT_SCALE_BIAS, OWL_LOGIT_SHIFT_BIAS, SAM_OBJECT_SCORE_BIAS

    with torch.no_grad():
        if hasattr(model, "class_head"):
            model.class_head.logit_shift.bias.fill_(OWL_LOGIT_SHIFT_BIAS)
            model.class_head.logit_scale.bias.fill_(OWL_LOGIT_SCALE_BIAS)
        else:
            model.prompt_encoder.shared_embedding.positional_embedding.copy_(
                model.shared_image_embedding.positional_embedding)
            model.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(SAM_OBJECT_SCORE_BIAS)


def parameters_m(model: Any) -> float:
    """Millions of parameters."""
    return sum(p.numel() for p in model.parameters()) / 1e6


# --- images ---------------------------------------------------------------------------------------
DEFAULT_IMAGE_HW = (720, 1280)


def load_images(folder: str | Path | None, limit: int) -> list[tuple[str, np.ndarray]]:
    """``(name, HxWx3 uint8)`` of up to ``limit`` images of ``folder`` (unreadable ones reported and
    skipped), or one generated 1280x720 image."""
    from runtime.images import load_image
    from runtime.video_io import IMAGE_SUFFIXES

    if folder is None:
        from tools.bench.synthetic import synthetic_image

        return [("synthetic-1280x720", synthetic_image(*DEFAULT_IMAGE_HW, seed=0))]
    path = Path(folder)
    if not path.is_dir():
        raise UserError(f"--images {folder}: not a folder; pass a folder of images (or leave it out for a generated one)")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    images = []
    for f in files[:limit]:
        try:
            images.append((f.name, load_image(f)))
        except UserError as e:
            print(f"skipped: {e}", file=sys.stderr)
    if not images:
        raise UserError(f"--images {folder}: no readable images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                        "pass a folder of images")
    return images


def image_size_arg(text: str) -> tuple[int, int]:
    """An ``argparse`` type: ``HEIGHTxWIDTH`` of at least 16x16."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not HEIGHTxWIDTH (e.g. 480x640)") from None
    if h < 16 or w < 16:
        raise argparse.ArgumentTypeError(f"{text} is too small (at least 16x16)")
    return h, w


# --- timing ---------------------------------------------------------------------------------------

def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def alternating_ms(fns: dict[str, Callable[[], Any]], runs: int, clock: Callable[[], float] = time.perf_counter,
                   progress: Callable[[int, dict[str, list[float]]], None] | None = None) -> dict[str, list[float]]:
    """Milliseconds of each call by ``clock`` (wall time; ``time.process_time``: the process's CPU time),
    after one warm-up call each. The functions take turns, run by run, so that a machine whose load
    changes during the measurement slows them alike; ``progress(run, times)`` after each run."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(runs):
        for k, fn in fns.items():
            t0 = clock()
            fn()
            times[k].append((clock() - t0) * 1000.0)
        if progress is not None:
            progress(i, times)
    return times


def median_ms(fns: dict[str, Callable[[], Any]], runs: int) -> dict[str, float]:
    """Median wall time of each function in ms (:func:`alternating_ms`)."""
    return {k: median(v) for k, v in alternating_ms(fns, runs).items()}


class Timer:
    """``timer(fn, *args)`` -> ``(result, milliseconds)``; on a CUDA ``device`` synchronised before
    and after, so that the span holds the queued GPU work."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)

    def __call__(self, fn: Callable[..., Any], *a: Any, **kw: Any) -> tuple[Any, float]:
        self.sync()
        t0 = time.perf_counter()
        out = fn(*a, **kw)
        self.sync()
        return out, (time.perf_counter() - t0) * 1e3


def parse_mode(name: str, device: Any) -> tuple[str, bool, Any, str | None]:
    """A PyTorch run mode -> ``(display name, torch.compile?, autocast dtype or None, note)``:
    eager-fp32, autocast-fp16 (bfloat16 on CPU, with a note), autocast-bf16, compile, compile-autocast-*."""
    import torch

    n = name.strip()
    comp = n.startswith("compile")
    rest = n[len("compile"):].lstrip("-") if comp else n
    note = None
    if rest in ("", "eager-fp32", "fp32"):
        amp = None
        if not comp and rest != "eager-fp32":
            raise ValueError(f"unknown mode {name!r}")
    elif rest == "autocast-fp16":
        amp = torch.float16
        if device.type == "cpu":
            amp, note = torch.bfloat16, "autocast-fp16 requested on CPU: ran bfloat16 autocast instead"
            n = n.replace("autocast-fp16", "autocast-bf16")
    elif rest == "autocast-bf16":
        amp = torch.bfloat16
    else:
        raise ValueError(
            f"unknown mode {name!r} (eager-fp32, autocast-fp16, autocast-bf16, compile, compile-autocast-fp16, "
            "compile-autocast-bf16)"
        )
    return n, comp, amp, note


# --- memory ---------------------------------------------------------------------------------------

def peak_rss_mb() -> float:
    """This process's peak resident memory so far (``ru_maxrss``), MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def rss_mb() -> float:
    """This process's resident memory now, MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# --- what a result records ------------------------------------------------------------------------

#: Packages whose versions change the graphs or their speed (``constraints.txt`` pins them).
PACKAGES = ("owlsam-trt", "torch", "torchvision", "transformers", "onnx", "onnxscript", "onnx-ir", "onnxruntime",
            "nvidia-modelopt", "numpy")
#: CPU features that decide ONNX Runtime's (MLAS) and PyTorch's (oneDNN/MKL) kernels.
CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni",
                "amx_tile", "amx_int8", "amx_bf16")


def cpu_info(cpuinfo: str = "/proc/cpuinfo") -> dict[str, Any]:
    """Model name, vendor, family/model/stepping and the :data:`CPU_FEATURES` of the first processor:
    a VM reports every AMD EPYC as "AMD EPYC", while a Zen 4 and a Zen 5 differ twofold in FP32 rate."""
    fields: dict[str, str] = {}
    try:
        with open(cpuinfo) as f:
            for line in f:
                if not line.strip():
                    break  # the first processor is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        return {"model": platform.processor() or None}
    flags = set(fields.get("flags", "").split())
    return {
        "model": fields.get("model name"),
        "vendor": fields.get("vendor_id"),
        "family": fields.get("cpu family"),
        "model_number": fields.get("model"),
        "stepping": fields.get("stepping"),
        "features": [f for f in CPU_FEATURES if f in flags],
    }


def package_versions() -> dict[str, str]:
    """The installed versions of :data:`PACKAGES` (those installed)."""
    import importlib.metadata

    out = {}
    for pkg in PACKAGES:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def machine_info() -> dict[str, Any]:
    """The host: Python, platform, CPU (:func:`cpu_info`) and count, the 1-minute load average at the
    call, and the versions of the packages the numbers depend on (:func:`package_versions`)."""
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "cpu_count": os.cpu_count(), "cpu": cpu_info(), "packages": package_versions()}
    try:
        info["load_average_1min"] = os.getloadavg()[0]
    except OSError:
        pass
    return info


def describe_machine(m: dict[str, Any]) -> str:
    """One line for a report: CPU, features, cores, load and the versions that matter."""
    cpu = m.get("cpu") or {}
    ident = "/".join(str(cpu.get(k)) for k in ("family", "model_number", "stepping") if cpu.get(k) is not None)
    versions = ", ".join(f"{k} {v}" for k, v in (m.get("packages") or {}).items() if k != "owlsam-trt")
    load = m.get("load_average_1min")
    return (f"{cpu.get('model')} (family/model/stepping {ident or '?'}; {' '.join(cpu.get('features') or []) or 'no AVX2'}), "
            f"{m.get('cpu_count')} CPUs" + (f", 1-min load average {load:.2f}" if load is not None else "")
            + f"; Python {m.get('python')}, {versions}")


def with_machine(module: str, results: Any, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """A result file's content: the :func:`command_line`, the :func:`machine_info` and ``results``."""
    return {"command": command_line(module, argv), "machine": machine_info(), "results": results}


def torch_machine_info(device: Any) -> dict[str, Any]:
    """:func:`machine_info` and the PyTorch side: torch, CUDA, cuDNN, transformers, torchvision,
    pillow versions, the device and its GPU, the float32 matmul precision."""
    import torch
    import transformers

    info = {
        **machine_info(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": None,
        "transformers": transformers.__version__,
        "device": str(device),
        "gpu": None,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except Exception as e:  # noqa: BLE001
        info["torchvision"] = f"not importable: {e}"
    try:
        import PIL

        info["pillow"] = PIL.__version__
    except Exception:  # noqa: BLE001
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["gpu_capability"] = f"{props.major}.{props.minor}"
        try:
            info["cudnn"] = torch.backends.cudnn.version()
        except Exception:  # noqa: BLE001
            pass
    return info


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
    """The command that ran ``python -m module`` with ``argv`` (default: this process's arguments)."""
    args = list(argv) if argv is not None else sys.argv[1:]
    return shlex.join([Path(sys.executable).name, "-m", module, *map(str, args)])


def fmt(v: float | None, digits: int = 1) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


# --- result files ---------------------------------------------------------------------------------

def write_json(path: str | Path, data: Any) -> Path:
    """``data`` as indented JSON at ``path`` (folders made), written atomically."""
    text = json.dumps(data, indent=1, default=str) + "\n"
    return write_text(path, text)


def write_text(path: str | Path, text: str) -> Path:
    """``text`` at ``path`` (folders made), written atomically; a one-line error if it cannot be."""
    path = Path(path)
    try:
        write_atomic(path, lambda f: f.write(text.encode()))
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror or e}); choose a writable path") from None
    return path
