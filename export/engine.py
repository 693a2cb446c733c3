"""TensorRT engines from an artifact's ONNX graphs, built on the GPU they will run on.

    python -m export.build --from engines/default --engines require [--opt-level 3] [--workspace-gb 8]

Strongly typed networks only: the precision is in the graph (``<graph>.fp16.onnx``,
``<graph>.int8.onnx``), TensorRT keeps the types it reads. TensorRT 10 needs the STRONGLY_TYPED
creation flag for that; TensorRT 11 is always strongly typed (the flag is deprecated and ignored),
so one build path serves both.

Small steps, each usable alone (as Polygraphy's loaders are):
``network_from_onnx`` (parse, every parser error reported with its node) -> ``builder_config``
(one optimisation profile from the manifest's ranges, optimisation level, workspace, timing cache)
-> ``serialized_engine`` -> ``write_bytes_atomic``; :func:`build_engines` runs them for every graph and
precision and returns the manifest's ``engines`` section. tensorrt is imported on first use.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from runtime.backends.tensorrt import (
    ENGINES_KEY,
    EngineRecord,
    TrtEngine,
    backend_status,
    engine_file_name,
    import_tensorrt,
    rebuild_hint,
    tensorrt_environment,
    tensorrt_major,
    tensorrt_object,
    trt_logger,
)
from runtime.errors import ArtifactError, UserError
from runtime.graphs import GRAPHS, GraphSpec, resolve_shape
from runtime.manifest import Manifest, export_command

if TYPE_CHECKING:
    import tensorrt as trt

TIMING_CACHE_NAME = "timing.cache"
MAX_OPTIMIZATION_LEVEL = 5  # IBuilderConfig.builder_optimization_level: 0..5, default 3

Shapes = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


class EngineBuildError(UserError):
    """TensorRT could not parse or build a graph."""


@dataclass(frozen=True)
class EngineOptions:
    """The build settings that change an engine (recorded with it in the manifest)."""

    optimization_level: int = 3
    workspace_bytes: int | None = None  # None: TensorRT's default (the device's global memory)
    timing_cache: Path | None = None  # None: <artifact>/timing.cache

    def __post_init__(self) -> None:
        if not 0 <= self.optimization_level <= MAX_OPTIMIZATION_LEVEL:
            raise UserError(f"optimisation level {self.optimization_level} is outside 0..{MAX_OPTIMIZATION_LEVEL}")
        if self.workspace_bytes is not None and self.workspace_bytes <= 0:
            raise UserError(f"workspace of {self.workspace_bytes} bytes must be positive")

    def record(self) -> dict[str, Any]:
        return {"optimization_level": self.optimization_level, "workspace_bytes": self.workspace_bytes}


def tensorrt_status() -> tuple[bool, str]:
    """``(available, reason)``: tensorrt importable, cuda-python present, a CUDA device visible."""
    return backend_status()


def skipped_note(root: Path | str, reason: str) -> str:
    """The one line ``--engines auto`` prints when it cannot build."""
    return f"engines skipped ({reason}); build them later on the target GPU with {rebuild_hint(root)}"


# --- pure steps --------------------------------------------------------------------------------

def profile_shapes(spec: GraphSpec, sizes: Mapping[str, int],
                   profiles: Mapping[str, Mapping[str, int]]) -> dict[str, Shapes]:
    """(min, opt, max) shape of every input of ``spec``: dynamic dims from ``profiles``, the rest from
    the artifact's static ``sizes``. One profile for the whole graph, so inputs sharing a dim agree."""
    missing = [d for d in spec.dynamic_dims if d not in profiles]
    if missing:
        raise ArtifactError(f"the manifest's profiles lack {missing} needed by {spec.name!r}; re-export the artifact")
    out: dict[str, Shapes] = {}
    for t in spec.inputs:
        lo, opt, hi = (resolve_shape(t, sizes, {d: int(profiles[d][which]) for d in spec.dynamic_dims})
                       for which in ("min", "opt", "max"))
        out[t.name] = (lo, opt, hi)
    return out


def graph_profiles(spec: GraphSpec, profiles: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    """The ranges of the dynamic dims ``spec`` uses, as recorded with its engine."""
    return {d: {k: int(profiles[d][k]) for k in ("min", "opt", "max")} for d in spec.dynamic_dims}


# --- TensorRT steps ----------------------------------------------------------------------------

def network_flags() -> int:
    """STRONGLY_TYPED on TensorRT 10; 0 on 11+, where networks are always strongly typed."""
    import tensorrt as trt

    if tensorrt_major(trt.__version__) >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


@dataclass
class ParsedNetwork:
    builder: trt.Builder
    network: trt.INetworkDefinition
    parser: trt.OnnxParser  # keeps the parsed weights alive until the build is done


def new_builder() -> trt.Builder:
    import_tensorrt()
    import tensorrt as trt

    return tensorrt_object(lambda: trt.Builder(trt_logger()), "a builder", EngineBuildError)


def network_from_onnx(onnx_path: Path, spec: GraphSpec | None = None, builder: trt.Builder | None = None
                      ) -> ParsedNetwork:
    """Parse ``onnx_path`` into a strongly typed network; every parser error is reported, with nodes."""
    import_tensorrt()
    import tensorrt as trt

    builder = builder or new_builder()
    network = builder.create_network(network_flags())
    if network is None:
        raise EngineBuildError("TensorRT could not create a network definition; see its log")
    parser: trt.OnnxParser = tensorrt_object(lambda: trt.OnnxParser(network, trt_logger()), "an ONNX parser",
                                             EngineBuildError)
    # parse_from_file, not parse(bytes): the parser must know the path to find external weights.
    ok = parser.parse_from_file(str(onnx_path))
    if not ok or parser.num_errors:
        problems = [_parser_error(parser.get_error(i)) for i in range(parser.num_errors)] or ["no error reported"]
        raise EngineBuildError(
            f"TensorRT could not parse {onnx_path} ({len(problems)} errors): {'; '.join(problems)}; "
            f"run python -m export.trt_check {onnx_path} and change the export"
        )
    if spec is not None:
        check_network_inputs(network, spec, onnx_path)
    return ParsedNetwork(builder, network, parser)


def _parser_error(err: trt.ParserError) -> str:
    node = err.node_name() or f"#{err.node()}"
    op = err.node_operator()
    return f"node {node}{f' ({op})' if op else ''}: {err.desc()}"


def check_network_inputs(network: trt.INetworkDefinition, spec: GraphSpec, where: Path | str) -> None:
    """The parsed network's inputs are the spec's, by name and rank (before any profile is set)."""
    got = {network.get_input(i).name: len(network.get_input(i).shape) for i in range(network.num_inputs)}
    want = {t.name: len(t.shape) for t in spec.inputs}
    if got != want:
        raise EngineBuildError(f"{where} has inputs {got} (name: rank), the spec of {spec.name!r} says {want}; "
                               "re-export the artifact")


def open_timing_cache(config: trt.IBuilderConfig, path: Path | None, say: Callable[[str], None]
                      ) -> trt.ITimingCache:
    """A timing cache for ``config``: the one in ``path`` if TensorRT accepts it, else a new one.

    ``ITimingCache.combine`` refuses a cache from another TensorRT version (and, with
    ``ignore_mismatch=False``, from another device): that cache is ignored with a message."""
    cache = config.create_timing_cache(b"")
    if cache is None:
        raise EngineBuildError("TensorRT could not create a timing cache; see its log")
    if path is None or not path.is_file():
        return cache
    try:
        old = config.create_timing_cache(path.read_bytes())
        problem = None if old is not None else "TensorRT cannot read it"
    except (RuntimeError, TypeError, ValueError) as e:  # what the bindings raise on a blob they reject
        old, problem = None, f"TensorRT cannot read it ({e})"
    if old is not None and not cache.combine(old, False):
        problem = "it comes from another TensorRT version or GPU"
    say(f"ignoring timing cache {path}: {problem}; it will be rewritten" if problem else f"using timing cache {path}")
    return cache


def builder_config(parsed: ParsedNetwork, shapes: Mapping[str, Shapes], options: EngineOptions,
                   timing_cache: trt.ITimingCache | None) -> trt.IBuilderConfig:
    """Config with one optimisation profile (``shapes``), level, workspace and the timing cache."""
    import tensorrt as trt

    config = parsed.builder.create_builder_config()
    if config is None:
        raise EngineBuildError("TensorRT could not create a builder config; see its log")
    profile = parsed.builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, trt.Dims(list(lo)), trt.Dims(list(opt)), trt.Dims(list(hi)))  # raises if inconsistent
    if config.add_optimization_profile(profile) < 0:
        raise EngineBuildError(f"TensorRT rejected the optimisation profile {dict(shapes)}; see its log")
    config.builder_optimization_level = options.optimization_level
    if options.workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    if timing_cache is not None and not config.set_timing_cache(timing_cache, False):
        raise EngineBuildError("TensorRT refused the timing cache for this build; delete it and build again")
    return config


def serialized_engine(parsed: ParsedNetwork, config: trt.IBuilderConfig, what: str) -> bytes:
    blob = parsed.builder.build_serialized_network(parsed.network, config)
    if blob is None:
        raise EngineBuildError(f"TensorRT could not build {what} (its log above says why); "
                               "try a larger --workspace-gb or check the graph with python -m export.trt_check")
    return bytes(blob)  # type: ignore[call-overload]  # IHostMemory has the buffer protocol; its stub does not say so


def write_bytes_atomic(data: bytes, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_timing_cache(cache: trt.ITimingCache, path: Path) -> None:
    write_bytes_atomic(bytes(cache.serialize()), path)  # type: ignore[call-overload]  # (as serialized_engine)


# --- the whole build ---------------------------------------------------------------------------

def build_engines(artifact_dir: Path, manifest: Mapping[str, Any], precisions: Sequence[str],
                  options: EngineOptions = EngineOptions(),
                  say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build an engine per graph and precision into ``artifact_dir``; return the manifest's new
    ``engines`` section (the existing one, with this GPU's entries added or replaced).

    Each graph's ONNX file is verified against the manifest first; each engine is deserialised once
    after the build to prove its bindings match the spec. Profiles are the manifest's ``profiles``.
    A precision whose ONNX file is one already built for the graph (an ``int8`` entry kept in FP16
    points at the ``fp16`` file) is not built again: its record names the same engine file."""
    say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
    root = Path(artifact_dir)
    m = Manifest(root=root, data=dict(manifest))
    env = tensorrt_environment()
    jobs = [(g, p) for p in precisions for g in m.graphs if p in m.graphs[g]["files"]]
    lacking = [p for p in precisions if not any(p in m.graphs[g]["files"] for g in m.graphs)]
    if lacking:
        raise ArtifactError(f"{root} has no {'/'.join(lacking)} graphs to build engines from; "
                            f"re-export with {export_command(root, dict(manifest), precision=lacking[0])}")
    unknown = [g for g in m.graphs if g not in GRAPHS]
    if unknown:
        raise ArtifactError(f"{root} lists graphs {unknown} this toolkit has no spec for; use the matching version")
    profiles = manifest["profiles"]
    cache_path = options.timing_cache or root / TIMING_CACHE_NAME
    engines = copy.deepcopy(dict(manifest.get(ENGINES_KEY, {})))
    # One builder and one timing cache for the whole run: the cache must outlive every builder using it.
    builder = new_builder()
    cache_config = builder.create_builder_config()
    timing_cache = open_timing_cache(cache_config, cache_path, say)
    say(f"building {len(jobs)} TensorRT engines with TensorRT {env.tensorrt_version} on {env.device}")
    built: dict[tuple[str, str], EngineRecord] = {}  # (graph, ONNX sha256) -> the record of its engine
    for i, (graph, precision) in enumerate(jobs, 1):
        spec = GRAPHS[graph]
        onnx_sha256 = m.graphs[graph]["files"][precision]["files"][0]["sha256"]
        same = built.get((graph, onnx_sha256))
        if same is not None:
            record = dataclasses.replace(same, precision=precision)
            engines.setdefault(graph, {}).setdefault(precision, {})[env.device.slug] = record.to_dict()
            say(f"[{i}/{len(jobs)}] {same.file}: also the {precision} engine (same ONNX graph)")
            continue
        t0 = time.perf_counter()
        onnx_path = m.graph_path(graph, precision)  # sha256-verified
        parsed = network_from_onnx(onnx_path, spec, builder)
        shapes = profile_shapes(spec, m.sizes, profiles)
        config = builder_config(parsed, shapes, options, timing_cache)
        data = serialized_engine(parsed, config, f"{graph} ({precision})")
        TrtEngine(data, spec, f"the new {graph} ({precision}) engine")  # bindings match the spec
        path = root / engine_file_name(graph, precision, env.device.slug)
        write_bytes_atomic(data, path)
        record = EngineRecord(
            graph=graph, precision=precision, file=path.name, sha256=hashlib.sha256(data).hexdigest(),
            bytes=len(data), tensorrt_version=env.tensorrt_version, gpu_name=env.device.name,
            compute_capability=env.device.compute_capability, profiles=graph_profiles(spec, profiles),
            builder=options.record(), onnx={"path": onnx_path.relative_to(root).as_posix(), "sha256": onnx_sha256},
        )
        built[(graph, onnx_sha256)] = record
        engines.setdefault(graph, {}).setdefault(precision, {})[env.device.slug] = record.to_dict()
        say(f"[{i}/{len(jobs)}] {path.name}: {len(data) / 2**20:.1f} MiB in {time.perf_counter() - t0:.1f} s")
    save_timing_cache(timing_cache, cache_path)
    return engines
