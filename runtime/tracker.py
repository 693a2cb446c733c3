"""Streaming video tracking on exported SAM2 graphs: OWLv2 detections start objects, SAM2's memory tracks them.

    tracker = Sam2Tracker.from_manifest(manifest, open_graph)      # needs an artifact exported with --video
    for result in track(frames, tracker, detector, ["a photo of a cat"], redetect_every=30):
        result.object_ids, result.boxes, result.masks              # one TrackedFrame per input frame

Per frame what transformers' ``Sam2VideoModel`` does, with each object's memory bank kept here in
fixed-size rings; on TensorRT the frame's graphs run on the tracker's own two CUDA streams. The
algorithm, the bank, the stream policy and the differences from the reference: docs/ARCHITECTURE.md
("One frame of video").
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from runtime.backends import GraphRunner, call_all, close_after, close_graphs, recording_opener
from runtime.errors import ArtifactError, UserError
from runtime.graphs import (IMAGE_HEIGHT, IMAGE_WIDTH, NUM_BOXES, NUM_MASKS, NUM_OBJECTS, SAM2_IMAGE, SAM2_MASKS,
                            SAM2_MEMORY_ATTENTION, SAM2_MEMORY_ENCODER, SAM2_OBJECT_POINTER, SAM2_PIXELS,
                            SAM2_PROMPT_DECODER, SAM2_TRACK_DECODER, SAM2_VIDEO_GRAPHS, GraphSpec)
from runtime.manifest import Manifest, export_command
from runtime.preprocessing import Sam2Preprocessing, boxes_to_sam2_input
from runtime.profiling import StageTimer
from runtime.resample import sam2_tables
from runtime.sam2 import MaskUpsampler

log = logging.getLogger(__name__)

__all__ = ["TrackedFrame", "Sam2Tracker", "track", "to_bfloat16_bits", "from_bfloat16_bits", "mask_boxes",
           "runs_on_streams"]

DEFAULT_NEW_OBJECT_IOU = 0.5
DEFAULT_MAX_OBJECTS = 64
DEVICE_WAIT = "device wait"  # timer stage: the host waiting for a CUDA event (TensorRT)
TRACKING_GRAPHS = (SAM2_PIXELS, SAM2_IMAGE, *SAM2_VIDEO_GRAPHS, SAM2_MASKS)

# binding names, from the specs
_EMBED, _FEAT0, _FEAT1 = SAM2_IMAGE.output_names
_MA_IN = dict(zip(("embed", "memory", "pos", "slots", "pointers", "offsets"), SAM2_MEMORY_ATTENTION.input_names, strict=True))
(_MA_OUT,) = SAM2_MEMORY_ATTENTION.output_names
_TD_IN = SAM2_TRACK_DECODER.input_names
_TD_MASKS, _TD_IOU, _TD_SCORES, _TD_TOKEN = SAM2_TRACK_DECODER.output_names
_PD_BOXES = SAM2_PROMPT_DECODER.input_names[-1]
_PD_MASKS, _PD_IOU, _PD_SCORES, _PD_TOKEN = SAM2_PROMPT_DECODER.output_names
_OP_TOKEN, _OP_SCORES = SAM2_OBJECT_POINTER.input_names
(_OP_OUT,) = SAM2_OBJECT_POINTER.output_names
_ME_IN = dict(zip(("embed", "masks", "scores", "prompt"), SAM2_MEMORY_ENCODER.input_names, strict=True))
_ME_FEATURES, _ME_POS = SAM2_MEMORY_ENCODER.output_names


def to_bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even as ``torch.Tensor.to(bfloat16)``."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = u + (((u >> 16) & 1) + np.uint32(0x7FFF))
    return (rounded >> 16).astype(np.uint16)


def from_bfloat16_bits(b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32 (exact)."""
    wide = b.astype(np.uint32) << 16
    f = wide.view(np.float32)
    if out is None:
        return f
    out[...] = f
    return out


#: ONNX Runtime computes attention as MatMul -> Softmax -> MatMul, materialising the attention map:
#: with a full bank that is 4096 x (7 * 4096 + 64) floats (470 MB) per object and memory-attention
#: layer for the released models. ``Sam2Tracker.open`` sizes the objects per call to this budget.
ORT_ATTENTION_BUDGET_BYTES = 1 << 30


def ort_objects_per_call(sizes: Mapping[str, int], budget: int = ORT_ATTENTION_BUDGET_BYTES) -> int:
    """Objects per memory-attention call whose attention maps fit ``budget`` on ONNX Runtime."""
    tokens = int(sizes["sam_memory_tokens"])
    splits = max(1, int(sizes["sam_embed_dim"]) // int(sizes["sam_memory_dim"]))
    keys = int(sizes["sam_num_maskmem"]) * tokens + splits * int(sizes["sam_max_object_pointers"])
    return max(1, budget // (tokens * keys * 4))


def tracker_limits(profiles: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor's limits that come from the artifact's profiles (masks per call, image size)."""
    return {"max_masks_per_call": int(profiles[NUM_MASKS]["max"]),
            "max_image_hw": (int(profiles[IMAGE_HEIGHT]["max"]), int(profiles[IMAGE_WIDTH]["max"]))}


def runs_on_streams(graphs: Mapping[str, object]) -> bool:
    """Whether a tracker on ``graphs`` runs its frames on its own CUDA streams: True when every
    tracking graph has ``enqueue`` (TensorRT graphs). A mix runs everything with ``run()`` (correct,
    without the device hand-offs), and says so."""
    queued = [g.name for g in TRACKING_GRAPHS if callable(getattr(graphs.get(g.name), "enqueue", None))]
    if queued and len(queued) < len(TRACKING_GRAPHS):
        others = [g.name for g in TRACKING_GRAPHS if g.name not in queued]
        log.warning("tracking graphs %s can be queued on CUDA streams but %s cannot: every graph runs with run(), "
                    "without device hand-offs; open them all on one backend", queued, others)
    return len(queued) == len(TRACKING_GRAPHS)


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool -> (N, 4) float32 xyxy of each mask's extent (pixel edges: x1 = last column + 1);
    all zeros for an empty mask."""
    n = masks.shape[0]
    out = np.zeros((n, 4), np.float32)
    for i in range(n):
        rows = np.flatnonzero(masks[i].any(axis=1))
        if rows.size == 0:
            continue
        cols = np.flatnonzero(masks[i].any(axis=0))
        out[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return out


@dataclass
class TrackedFrame:
    """The tracked objects of one frame, in the order they started (ids increase)."""

    index: int  # frame index in the stream, from 0
    object_ids: np.ndarray  # (N,) int64, stable across frames, from 1
    labels: np.ndarray  # (N,) int64: prompt index of the detection that started the object; -1 for a box prompt
    masks: np.ndarray  # (N, H, W) bool, H, W of the frame
    boxes: np.ndarray  # (N, 4) float32 xyxy of each mask's extent, zeros where the mask is empty
    object_scores: np.ndarray  # (N,) float32 SAM2 object score logits; <= 0 means absent (empty mask)
    new: np.ndarray  # (N,) bool: the object started on this frame
    image: np.ndarray | None = None  # the frame itself (HxWx3 uint8 RGB), for writers of overlays

    def __len__(self) -> int:
        return int(len(self.object_ids))

    @property
    def present(self) -> np.ndarray:
        return self.object_scores > 0


class _Track:
    """One object's memory bank: its prompted frame's memory and pointer, and fixed-size rings of
    its most recent tracked memories (bfloat16 bits) and pointers."""

    __slots__ = ("object_id", "label", "start", "cond_memory", "cond_pointer", "memory", "memory_frame",
                 "pointer", "pointer_frame", "absent_for")

    def __init__(self, object_id: int, label: int, start: int, recent_memories: int, recent_pointers: int,
                 tokens: int, mem_dim: int, hidden: int) -> None:
        self.object_id, self.label, self.start = object_id, label, start
        self.cond_memory = np.zeros((tokens, mem_dim), np.uint16)
        self.cond_pointer = np.zeros(hidden, np.float32)
        self.memory = np.zeros((recent_memories, tokens, mem_dim), np.uint16)
        self.memory_frame = np.full(recent_memories, -1, np.int64)
        self.pointer = np.zeros((recent_pointers, hidden), np.float32)
        self.pointer_frame = np.full(recent_pointers, -1, np.int64)
        self.absent_for = 0

    def store(self, t: int, memory_bits: np.ndarray, pointer: np.ndarray) -> None:
        if t == self.start:
            self.cond_memory[...] = memory_bits
            self.cond_pointer[...] = pointer
            return
        i = t % len(self.memory_frame)
        self.memory[i], self.memory_frame[i] = memory_bits, t
        j = t % len(self.pointer_frame)
        self.pointer[j], self.pointer_frame[j] = pointer, t

    def bank(self, t: int) -> tuple[list[np.ndarray], list[int], list[np.ndarray], list[int]]:
        """Memories (bits), their temporal slots, pointers and their frame offsets for frame t, in the
        reference's order: prompted frame first, then memories oldest first and pointers newest first."""
        recent_m, recent_p = len(self.memory_frame), len(self.pointer_frame)
        memories, slots = [self.cond_memory], [recent_m]  # the prompted frame: the last slot
        for off in range(recent_m, 0, -1):  # tracked frames only: after the prompted one
            i = (t - off) % recent_m
            if t - off > self.start and self.memory_frame[i] == t - off:
                memories.append(self.memory[i])
                slots.append(off - 1)
        pointers, offsets = [self.cond_pointer], [t - self.start]
        for off in range(1, recent_p + 1):
            if t - off < 0:
                break
            j = (t - off) % recent_p
            if t - off > self.start and self.pointer_frame[j] == t - off:
                pointers.append(self.pointer[j])
                offsets.append(off)
        return memories, slots, pointers, offsets


class Sam2Tracker:
    """SAM2 tracking state over one stream; ``step`` processes one frame. ``reset`` starts a new stream."""

    def __init__(self, graphs: Mapping[str, GraphRunner], preprocessing: Sam2Preprocessing, sizes: Mapping[str, int],
                 max_objects_per_call: int, max_boxes_per_call: int, *, max_masks_per_call: int,
                 max_image_hw: tuple[int, int], objects_per_call: int | None = None,
                 max_objects: int = DEFAULT_MAX_OBJECTS, new_object_iou: float = DEFAULT_NEW_OBJECT_IOU,
                 forget_after: int | None = None) -> None:
        missing = [g.name for g in TRACKING_GRAPHS if g.name not in graphs]
        if missing:
            raise ArtifactError(f"tracking needs the graphs {missing}; re-export the artifact with python -m export.build "
                                "--owl-model ID|DIR --sam-model ID|DIR --out DIR --video")
        self.graphs = dict(graphs)
        self.preprocessing = preprocessing
        self.slots = int(sizes["sam_num_maskmem"])
        self.max_pointers = int(sizes["sam_max_object_pointers"])
        self.tokens, self.mem_dim, self.hidden = (int(sizes[k]) for k in ("sam_memory_tokens", "sam_memory_dim", "sam_embed_dim"))
        self.mask_size = int(sizes["sam_mask_size"])  # the decoders' low-res masks: the model's, not the processor's
        if objects_per_call is not None and objects_per_call < 1:
            raise UserError(f"objects_per_call must be at least 1, got {objects_per_call}")
        self.objects_per_call = min(objects_per_call or max_objects_per_call, max_objects_per_call)
        self.boxes_per_call = int(max_boxes_per_call)
        if max_objects < 1:
            raise UserError(f"max_objects must be at least 1, got {max_objects}")
        if not 0.0 < new_object_iou <= 1.0:
            raise UserError(f"new_object_iou must be in (0, 1], got {new_object_iou}")
        if forget_after is not None and forget_after < 1:
            raise UserError(f"forget_after must be at least 1 frame (or None: never), got {forget_after}")
        self.max_objects, self.new_object_iou, self.forget_after = max_objects, new_object_iou, forget_after
        self.timer = StageTimer()  # wall time per stage and frames, for measurements
        self.upsample = MaskUpsampler(self.graphs[SAM2_MASKS.name], self.mask_size, max_masks_per_call, self.timer)
        self.max_image_hw = tuple(max_image_hw)
        self.on_streams = runs_on_streams(self.graphs)
        self.streams = None  # (frame stream, memory stream) on TensorRT
        self._owns_graphs = False  # set by open: close() then closes the graphs too
        if self.on_streams:
            from runtime.backends.tensorrt import close_streams, open_streams

            self.streams = open_streams(2, self.graphs[SAM2_IMAGE.name].cuda)
            try:
                self._prepare_streams()
            except BaseException:
                call_all([lambda: close_streams(self.streams)], raise_first=False)  # the first error goes on
                raise
        log.info("tracking %s", "on two CUDA streams (TensorRT graphs)" if self.on_streams else "with run() per graph")
        self.reset()

    @staticmethod
    def check_video_graphs(manifest: Manifest) -> None:
        """An ``ArtifactError`` saying how to re-export, unless ``manifest`` has every video graph."""
        missing = [g.name for g in SAM2_VIDEO_GRAPHS if g.name not in manifest.graphs]
        if missing:
            raise ArtifactError(
                f"{manifest.root} has no video graphs ({', '.join(missing)}); re-export it with "
                f"{export_command(manifest.root, manifest.data, video=True)} to track objects in videos"
            )

    @classmethod
    def from_manifest(cls, manifest: Manifest, open_graph: Callable[[GraphSpec], GraphRunner], **options) -> "Sam2Tracker":
        cls.check_video_graphs(manifest)
        pre = Sam2Preprocessing.from_dict(manifest.preprocessing("sam"))
        profiles = manifest.data["profiles"]
        graphs = {g.name: open_graph(g) for g in TRACKING_GRAPHS}
        return cls(graphs, pre, manifest.sizes, manifest.profile_max(NUM_OBJECTS), manifest.profile_max(NUM_BOXES),
                   **tracker_limits(profiles), **options)

    @classmethod
    def open(cls, manifest: Manifest, backend: str = "onnxruntime", precision: str = "fp32", *,
             open_graph: Callable[[GraphSpec], GraphRunner] | None = None, **options) -> "Sam2Tracker":
        """``from_manifest`` with the graphs opened on ``backend`` ("onnxruntime" or "tensorrt", as
        chosen for the image pipeline) at ``precision``, by ``open_graph`` when given (an opener of
        that backend and precision, e.g. the image pipeline's, with its providers and threads). The
        tracker owns these graphs: :meth:`close` closes them."""
        from runtime.backends import onnxruntime_opener

        cls.check_video_graphs(manifest)  # before anything reads the video graphs' sizes
        if backend == "onnxruntime":
            opener = open_graph or onnxruntime_opener(manifest, precision)
            if options.get("objects_per_call") is None:
                options["objects_per_call"] = ort_objects_per_call(manifest.sizes)
        elif backend == "tensorrt":
            from runtime.backends.tensorrt import tensorrt_opener

            opener = open_graph or tensorrt_opener(manifest, precision)
        else:
            raise UserError(f"backend {backend!r} cannot track; use onnxruntime or tensorrt")
        opened: list[GraphRunner] = []
        try:
            tracker = cls.from_manifest(manifest, recording_opener(opener, opened), **options)
        except BaseException:
            close_graphs(opened)
            raise
        tracker._owns_graphs = True
        return tracker

    def reset(self) -> None:
        self._unstored = None  # the last frame's memories, not yet in the banks (see _store_memories)
        self.tracks: list[_Track] = []
        self.next_id = 1
        self.frame_index = 0
        self.frame_hw: tuple[int, int] | None = None
        self.memory_pos: np.ndarray | None = None

    @property
    def num_objects(self) -> int:
        return len(self.tracks)

    def close(self) -> None:
        """Free the tracker's CUDA streams (TensorRT; nothing to do on ONNX Runtime), and the graphs
        if :meth:`open` opened them; graphs given to the constructor or ``from_manifest`` stay
        open: whoever opened them closes them."""
        self._unstored = None
        streams, self.streams = self.streams, None
        owned, self._owns_graphs = self._owns_graphs, False
        try:
            if streams is not None:
                from runtime.backends.tensorrt import close_streams

                close_streams(streams)
        finally:
            if owned:
                close_graphs(self.graphs.values())  # after the streams: their work is done

    def __enter__(self) -> "Sam2Tracker":
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        close_after(self.close, exc)

    def _prepare_streams(self) -> None:
        """Each graph's context and buffers for its stream, made now (not in the first frame), pinned
        host memory only for what the host writes or reads (see the stream policy above)."""
        frame, memory = self.streams
        embed = _MA_IN["embed"]
        plan = [(SAM2_PIXELS, frame, None, ()), (SAM2_IMAGE, frame, None, ()), (SAM2_MEMORY_ATTENTION, frame, [n for n in _MA_IN.values() if n != embed], ()),
                (SAM2_TRACK_DECODER, frame, (), (_TD_MASKS, _TD_SCORES)), (SAM2_OBJECT_POINTER, frame, None, (_OP_OUT,)),
                (SAM2_PROMPT_DECODER, frame, (_PD_BOXES,), (_PD_MASKS, _PD_SCORES, _PD_TOKEN)),
                (SAM2_MEMORY_ENCODER, memory, [n for n in _ME_IN.values() if n != _ME_IN["embed"]], (_ME_FEATURES, _ME_POS))]
        for spec, stream, host_inputs, host_outputs in plan:
            self.graphs[spec.name].prepare(stream, host_inputs=host_inputs, host_outputs=host_outputs)
        self.upsample.stream = frame  # the masks of a frame: on its stream, after its decoders
        self.upsample.prepare()

    # --- graph calls ---------------------------------------------------------------------------

    def _run(self, spec: GraphSpec, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self.timer(spec.name):
            return self.graphs[spec.name].run(feeds)

    def _enqueue(self, spec: GraphSpec, feeds: Mapping, host_outputs: Sequence[str], stream: int = 0):
        """Queue ``spec`` on the tracker's frame (0) or memory (1) stream: a ``Pending`` whose
        ``host_outputs`` come back to the host, the other outputs staying on the device."""
        if self.streams is None:
            raise UserError("this tracker was closed; open a new one")
        with self.timer(spec.name):
            return self.graphs[spec.name].enqueue(feeds, self.streams[stream], host_outputs)

    def _wait(self, pending) -> dict[str, np.ndarray]:
        with self.timer(DEVICE_WAIT):
            return pending.outputs()

    def _call(self, spec: GraphSpec, feeds: Mapping, host_outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """A call whose outputs the host reads at once: ``run()``, or queued on the frame stream
        and waited for (only ``host_outputs`` come back)."""
        if not self.on_streams:
            return self._run(spec, feeds)
        return self._wait(self._enqueue(spec, feeds, host_outputs))

    def _encode(self, frame: np.ndarray) -> dict:
        """The frame's features (batch of one): arrays, or device tensors on the frame stream."""
        h, w = frame.shape[:2]
        if h > self.max_image_hw[0] or w > self.max_image_hw[1]:
            raise UserError(f"video frames of {w}x{h} are larger than the artifact's image profile "
                            f"({self.max_image_hw[1]}x{self.max_image_hw[0]}); re-export with --max-image-side "
                            f"{max(h, w)}, or downscale the video")
        feeds = {SAM2_PIXELS.input_names[0]: frame[None], **sam2_tables(h, w, self.preprocessing)}
        if not self.on_streams:
            pixels = self._run(SAM2_PIXELS, feeds)[SAM2_PIXELS.output_names[0]]
            return self._run(SAM2_IMAGE, {SAM2_IMAGE.input_names[0]: pixels})
        pixels = self._enqueue(SAM2_PIXELS, feeds, host_outputs=()).device(SAM2_PIXELS.output_names[0])
        encoded = self._enqueue(SAM2_IMAGE, {SAM2_IMAGE.input_names[0]: pixels}, host_outputs=())
        return {n: encoded.device(n) for n in SAM2_IMAGE.output_names}

    def _track(self, t: int, feats: dict) -> dict[str, np.ndarray]:
        """Masks, scores and pointers of every existing object on frame t, by memory attention."""
        n = len(self.tracks)
        h = self.mask_size
        out = {"masks": np.empty((n, 1, h, h), np.float32), "scores": np.empty((n, 1), np.float32),
               "pointers": np.empty((n, self.hidden), np.float32)}
        for idx, bank in self._bank_chunks(t):
            attention = {_MA_IN["embed"]: feats[_EMBED], **bank}
            frame = (feats[_FEAT0], feats[_FEAT1])
            if not self.on_streams:
                conditioned = self._run(SAM2_MEMORY_ATTENTION, attention)[_MA_OUT]
                dec = self._run(SAM2_TRACK_DECODER, dict(zip(_TD_IN, (conditioned, *frame), strict=True)))
                ptr = self._run(SAM2_OBJECT_POINTER, {_OP_TOKEN: dec[_TD_TOKEN], _OP_SCORES: dec[_TD_SCORES]})[_OP_OUT]
            else:  # one chain on the frame stream; the host waits once, for masks, scores and pointers
                conditioned = self._enqueue(SAM2_MEMORY_ATTENTION, attention, host_outputs=()).device(_MA_OUT)
                decoded = self._enqueue(SAM2_TRACK_DECODER, dict(zip(_TD_IN, (conditioned, *frame), strict=True)),
                                        host_outputs=(_TD_MASKS, _TD_SCORES))
                pointer = self._enqueue(SAM2_OBJECT_POINTER, {_OP_TOKEN: decoded.device(_TD_TOKEN),
                                                              _OP_SCORES: decoded.device(_TD_SCORES)},
                                        host_outputs=(_OP_OUT,))
                dec, ptr = self._wait(decoded), self._wait(pointer)[_OP_OUT]
            out["masks"][idx] = dec[_TD_MASKS]
            out["scores"][idx] = dec[_TD_SCORES]
            out["pointers"][idx] = ptr
        return out

    def _bank_chunks(self, t: int) -> Iterator[tuple[list[int], dict[str, np.ndarray]]]:
        """The objects' memory banks for frame t as memory-attention feeds (all but the frame's
        embedding): objects with equal bank lengths together, ``objects_per_call`` at a time."""
        if not self.tracks:
            return
        banks = [tr.bank(t) for tr in self.tracks]
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, (mems, _, ptrs, _) in enumerate(banks):
            groups[(len(mems), len(ptrs))].append(i)
        for (m, p), members in groups.items():
            for start in range(0, len(members), self.objects_per_call):
                idx = members[start : start + self.objects_per_call]
                k = len(idx)
                memory = np.empty((k, m, self.tokens, self.mem_dim), np.float32)
                slots = np.zeros((k, m, self.slots), np.float32)
                pointers = np.empty((k, p, self.hidden), np.float32)
                offsets = np.empty((k, p), np.float32)
                with self.timer("memory bank"):
                    for r, i in enumerate(idx):
                        mems, slot, ptrs, offs = banks[i]
                        for j, bits in enumerate(mems):
                            from_bfloat16_bits(bits, out=memory[r, j])
                        slots[r, np.arange(m), slot] = 1.0
                        pointers[r] = np.stack(ptrs)
                        offsets[r] = offs
                yield idx, {_MA_IN["memory"]: memory, _MA_IN["pos"]: self.memory_pos, _MA_IN["slots"]: slots,
                            _MA_IN["pointers"]: pointers, _MA_IN["offsets"]: offsets}

    def _prompt(self, feats: dict, boxes_model: np.ndarray) -> dict[str, np.ndarray]:
        """Masks, scores and pointers of objects started from boxes (model-input coordinates)."""
        n = len(boxes_model)
        parts = []
        for start in range(0, n, self.boxes_per_call):
            chunk = boxes_model[None, start : start + self.boxes_per_call]
            feeds = {_EMBED: feats[_EMBED], _FEAT0: feats[_FEAT0], _FEAT1: feats[_FEAT1], _PD_BOXES: chunk}
            dec = self._call(SAM2_PROMPT_DECODER, feeds, host_outputs=(_PD_MASKS, _PD_SCORES, _PD_TOKEN))
            masks, scores, tokens = dec[_PD_MASKS][0], dec[_PD_SCORES][0], dec[_PD_TOKEN][0]
            # boxes are prompts of a few frames only: their tokens take the host's way to the pointer graph
            ptrs = [self._call(SAM2_OBJECT_POINTER, {_OP_TOKEN: tokens[s : s + self.objects_per_call],
                                                    _OP_SCORES: scores[s : s + self.objects_per_call]},
                               host_outputs=(_OP_OUT,))[_OP_OUT]
                    for s in range(0, len(tokens), self.objects_per_call)]
            parts.append((masks, scores, np.concatenate(ptrs)))
        return {"masks": np.concatenate([p[0] for p in parts]), "scores": np.concatenate([p[1] for p in parts]),
                "pointers": np.concatenate([p[2] for p in parts])}

    def _encode_memories(self, feats: dict, masks: np.ndarray, scores: np.ndarray,
                         is_prompt: np.ndarray) -> Callable[[], np.ndarray]:
        """Each object's memory of this frame: a function giving their bfloat16 bits [N, tokens, D].
        On TensorRT the last call is still running on the memory stream: the function waits for it."""
        n = len(masks)
        bits = np.empty((n, self.tokens, self.mem_dim), np.uint16)

        def take(out: dict[str, np.ndarray], e: slice) -> None:
            if self.memory_pos is None:
                self.memory_pos = np.ascontiguousarray(out[_ME_POS][:1])
            with self.timer("memory bank"):
                bits[e] = to_bfloat16_bits(out[_ME_FEATURES])

        last = None  # (rows, Pending) of the call still on the memory stream
        for s in range(0, n, self.objects_per_call):
            e = slice(s, s + self.objects_per_call)
            feeds = {_ME_IN["embed"]: feats[_EMBED], _ME_IN["masks"]: masks[e], _ME_IN["scores"]: scores[e],
                     _ME_IN["prompt"]: is_prompt[e]}
            if not self.on_streams:
                take(self._run(SAM2_MEMORY_ENCODER, feeds), e)
                continue
            if last is not None:  # one call of a graph per stream at a time: read the previous one first
                take(self._wait(last[1]), last[0])
            host = (_ME_FEATURES,) if self.memory_pos is not None else (_ME_FEATURES, _ME_POS)
            last = (e, self._enqueue(SAM2_MEMORY_ENCODER, feeds, host_outputs=host, stream=1))

        def finish() -> np.ndarray:
            if last is not None:
                take(self._wait(last[1]), last[0])
            return bits

        return finish

    def _store_memories(self) -> None:
        """Put the last step's memories into its objects' banks (TensorRT: joins the memory stream)."""
        if self._unstored is None:
            return
        finish, tracks, pointers, t = self._unstored
        self._unstored = None
        bits = finish()
        with self.timer("memory bank"):
            for i, tr in enumerate(tracks):
                tr.store(t, bits[i], pointers[i])

    # --- one frame -----------------------------------------------------------------------------

    def step(self, frame: np.ndarray, boxes: np.ndarray | None = None, labels: Sequence[int] | None = None,
             dedupe: bool | Sequence[bool] = False) -> TrackedFrame:
        """Track every object onto ``frame`` (HxWx3 uint8 RGB) and start one per box of ``boxes``
        ((K, 4) xyxy in frame pixels). ``labels`` (prompt index per box, default -1) is carried in the
        results. A box with ``dedupe`` (one flag, or one per box: detections) starts an object only
        if its mask overlaps no object of this frame (tracked, or started from an earlier box) with
        IoU >= ``new_object_iou``; boxes are taken in the given order."""
        t = self.frame_index
        if not (isinstance(frame, np.ndarray) and frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8):
            what = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
            raise UserError(f"frame {t}: expected an HxWx3 uint8 RGB array, got {what}")
        hw = (int(frame.shape[0]), int(frame.shape[1]))
        if self.frame_hw is None:
            self.frame_hw = hw
        elif hw != self.frame_hw:
            raise UserError(
                f"frame {t} is {hw[1]}x{hw[0]} but the stream started at {self.frame_hw[1]}x{self.frame_hw[0]}; "
                "the frames of one video must share one size (resize them, or track each part separately)"
            )
        boxes = np.zeros((0, 4), np.float32) if boxes is None else np.asarray(boxes)
        if labels is None:
            labels = [-1] * len(boxes)
        if len(labels) != len(boxes):
            raise UserError(f"frame {t}: {len(boxes)} boxes but {len(labels)} labels")
        check = np.broadcast_to(np.asarray(dedupe, bool), (len(boxes),))
        self.timer.frames += 1

        if not self.tracks and len(boxes) == 0:  # nothing to track: no SAM2 work at all
            self._store_memories()
            self.frame_index += 1
            empty = np.zeros(0, np.int64)
            return TrackedFrame(t, empty, empty.copy(), np.zeros((0, *hw), bool), np.zeros((0, 4), np.float32),
                                np.zeros(0, np.float32), np.zeros(0, bool), frame)

        feats = self._encode(frame)
        self._store_memories()  # the previous frame's, before any bank is read (on TensorRT: after queueing the encoder)
        tracked = self._track(t, feats)
        n_old = len(self.tracks)
        masks, scores, pointers = tracked["masks"], tracked["scores"], tracked["pointers"]
        if len(boxes):
            boxes_model = boxes_to_sam2_input(boxes, hw, self.preprocessing)
            prompted = self._prompt(feats, boxes_model)
            keep = self._select_new(masks, prompted["masks"], check)
            room = self.max_objects - n_old
            if len(keep) > room:
                log.warning("frame %d: %d new objects but room for %d (max_objects=%d); the lowest-ranked are "
                            "not tracked", t, len(keep), max(room, 0), self.max_objects)
                keep = keep[: max(room, 0)]
            if keep:
                masks = np.concatenate([masks, prompted["masks"][keep]])
                scores = np.concatenate([scores, prompted["scores"][keep]])
                pointers = np.concatenate([pointers, prompted["pointers"][keep]])
                for i in keep:
                    self.tracks.append(_Track(self.next_id, int(labels[i]), t, self.slots - 1, self.max_pointers - 1,
                                              self.tokens, self.mem_dim, self.hidden))
                    self.next_id += 1
        is_prompt = np.zeros((len(self.tracks), 1), np.float32)
        is_prompt[n_old:] = 1.0
        self._unstored = (self._encode_memories(feats, masks, scores, is_prompt), list(self.tracks), pointers, t)
        if not self.on_streams:
            self._store_memories()  # at once: the memory encoder has already run
        with self.timer("postprocess"):
            full = self.upsample(masks[:, 0], hw)
            result = TrackedFrame(
                index=t,
                object_ids=np.array([tr.object_id for tr in self.tracks], np.int64),
                labels=np.array([tr.label for tr in self.tracks], np.int64),
                masks=full,
                boxes=mask_boxes(full),
                object_scores=scores[:, 0].astype(np.float32),
                new=np.arange(len(self.tracks)) >= n_old,
                image=frame,
            )
        self._forget(result)
        self.frame_index += 1
        return result

    def _select_new(self, tracked_masks: np.ndarray, new_masks: np.ndarray, check: np.ndarray) -> list[int]:
        """Indices of the boxes that start objects: those not checked, and the checked ones whose
        low-res mask is not empty and overlaps no tracked or already started mask with IoU >=
        new_object_iou."""
        kept: list[np.ndarray] = [m[0].ravel() > 0 for m in tracked_masks]
        keep = []
        for i, m in enumerate(new_masks):
            fg = m[0].ravel() > 0
            if check[i]:
                if not fg.any():
                    continue  # an empty mask (object absent) starts nothing
                if any(np.logical_and(fg, k).sum() >= self.new_object_iou * np.logical_or(fg, k).sum() for k in kept):
                    continue
            keep.append(i)
            kept.append(fg)
        return keep

    def _forget(self, result: TrackedFrame) -> None:
        if self.forget_after is None:
            return
        for tr, present in zip(self.tracks, result.present):
            tr.absent_for = 0 if present else tr.absent_for + 1
        gone = [tr.object_id for tr in self.tracks if tr.absent_for >= self.forget_after]
        if gone:
            log.info("frame %d: objects %s absent for %d frames, no longer tracked", result.index, gone, self.forget_after)
            self.tracks = [tr for tr in self.tracks if tr.absent_for < self.forget_after]


def track(frames: Iterable[np.ndarray], tracker: Sam2Tracker, detector=None, queries: Sequence[str] = (), *,
          boxes: np.ndarray | None = None, redetect_every: int | None = None, threshold: float = 0.1,
          ) -> Iterator[TrackedFrame]:
    """Track objects through ``frames`` (HxWx3 uint8 RGB, consumed one at a time); yield one
    ``TrackedFrame`` per frame.

    Objects start from ``boxes`` ((K, 4) xyxy on the first frame: each box one object), and/or from
    OWLv2 detections of ``queries`` (the text as the detector takes it, prompt template applied) on
    the first frame and every ``redetect_every`` frames (None or 0: the first frame only), above
    ``threshold``; a detection overlapping an object of that frame (mask IoU >= the tracker's
    ``new_object_iou``) starts nothing.
    """
    if redetect_every is not None and redetect_every < 0:
        raise UserError(f"redetect_every must be a positive number of frames (or 0/None: first frame only), got {redetect_every}")
    if queries and detector is None:
        raise UserError("text prompts need an OWLv2 detector; pass one, or give boxes instead")
    if not queries and boxes is None:
        raise UserError("nothing to track: give text prompts or boxes for the first frame")
    tracker.reset()
    for t, frame in enumerate(frames):
        new_boxes, labels, dedupe = np.zeros((0, 4), np.float32), [], []
        if t == 0 and boxes is not None:  # each box one object
            new_boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
            labels, dedupe = [-1] * len(new_boxes), [False] * len(new_boxes)
        if queries and (t == 0 or (redetect_every and t % redetect_every == 0)):
            with tracker.timer("detection"):
                det = detector.detect([frame], list(queries), threshold)[0]
            order = np.argsort(-det.scores, kind="stable")  # the best detection of an object starts it
            new_boxes = np.concatenate([new_boxes, det.boxes[order].astype(np.float32)])
            labels += det.labels[order].tolist()
            dedupe += [True] * len(order)
        yield tracker.step(frame, new_boxes, labels, dedupe=dedupe)
