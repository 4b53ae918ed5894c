"""Load any diffusers pipeline from a folder and call it with API parameters.

The pipeline is asked what it accepts (``inspect.signature`` of ``__call__``) instead of
being special-cased by class, so a new pipeline works as long as it speaks diffusers' usual
argument names.
"""

from __future__ import annotations

import inspect
import io
import logging
import math
import os
import re
import threading
import time
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imagecodecs
import numpy
from PIL import Image, ImageOps

from tessera.runtime.params import JobParams, OutputFormat
from tessera.runtime.worker.options import (
    SIZE_ARGUMENTS,
    ApiArgument,
    PipelineOptions,
    no_cache_context,
    pipeline_class,
)

log = logging.getLogger(__name__)

# Diffusion pipelines work on latents 8x smaller than the image, packed 2x2 by most
# transformers: sizes on a 16-pixel grid are safe for all of them.
SIZE_MULTIPLE = 16

# Chosen with bench/serving_overhead.py (docs/benchmarks.md): encoding runs on the pipeline's
# thread, so its milliseconds are GPU time, and each extra byte is egress. PNG through
# imagecodecs (zlib level 1, run-length strategy, the "average" filter) is 3-5x faster than
# Pillow's level 1 and smaller than Pillow's default level; fpng is faster still but 20-65%
# larger, which costs more in egress than it saves. Pillow's JPEG is libjpeg-turbo already;
# WebP's fastest method is about twice as fast as the default for 0-16% more bytes.
PNG_OPTIONS: dict[str, int] = {"level": 1, "strategy": 3, "filter": 64}
_PILLOW_ENCODERS: dict[OutputFormat, tuple[str, dict[str, Any]]] = {
    OutputFormat.JPEG: ("JPEG", {"quality": 95}),
    OutputFormat.WEBP: ("WEBP", {"quality": 95, "method": 0}),
}
CONTENT_TYPES = {
    OutputFormat.PNG: "image/png",
    OutputFormat.JPEG: "image/jpeg",
    OutputFormat.WEBP: "image/webp",
}


class UnsupportedParameter(ValueError):
    """The pipeline cannot honour a parameter the job asks for."""


def round_up(value: int, multiple: int = SIZE_MULTIPLE) -> int:
    return -(-value // multiple) * multiple


def crop_center(image: Image.Image, width: int, height: int) -> Image.Image:
    """The requested size out of a slightly larger generation."""
    if image.size == (width, height):
        return image
    left = (image.width - width) // 2
    top = (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def encode(image: Image.Image, output_format: OutputFormat) -> tuple[bytes, str]:
    """Image bytes and their content type. Blocking (tens of milliseconds at 1024x1024):
    call it off the event loop."""
    content_type = CONTENT_TYPES[output_format]
    if output_format is OutputFormat.PNG:
        return bytes(imagecodecs.png_encode(numpy.asarray(image), **PNG_OPTIONS)), content_type
    name, options = _PILLOW_ENCODERS[output_format]
    buffer = io.BytesIO()
    image.save(buffer, format=name, **options)
    return buffer.getvalue(), content_type


def quiet_libraries() -> None:
    """Silence per-file progress bars and import-time notices, which bury the server's log;
    called before torch is first imported, so OpenMP's settings below still apply."""
    # torch's OpenMP threads spin for a while after each parallel op by default. Beside an
    # event loop in the same process (``serve``) or other processes on a few cores they take
    # the cores the API needs: measured with bench/serving_overhead.py (docs/benchmarks.md).
    # Sleeping instead costs a CPU pipeline nothing measurable; a user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    import diffusers

    diffusers.logging.set_verbosity_error()
    diffusers.logging.disable_progress_bar()


# What from_pretrained reads: the weights and the small files beside them.
WEIGHT_SUFFIXES = frozenset({".safetensors", ".bin", ".pt", ".pth", ".gguf"})


def prefetch(path: Path) -> int:
    """Ask the kernel to start reading the pipeline's weight files now, so that the disk
    works while torch and diffusers import (seconds of CPU) instead of after; returns the
    bytes asked for. Only advice: nothing waits for it, and it is skipped where the
    platform has no ``posix_fadvise``."""
    advise = getattr(os, "posix_fadvise", None)
    asked = 0
    if advise is None:
        return asked
    for file in sorted(path.rglob("*")):
        if file.suffix not in WEIGHT_SUFFIXES or not file.is_file():
            continue
        fd = os.open(file, os.O_RDONLY)
        try:
            advise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            asked += os.fstat(fd).st_size
        finally:
            os.close(fd)
    return asked


def sets_cache_context(pipeline_class: type) -> bool:
    """Whether the pipeline's ``__call__`` names its denoiser calls with diffusers'
    ``cache_context`` ("cond", "uncond"), under which cache hooks keep one state per kind of
    call. Read from the method's code rather than a list of classes, so a new pipeline is
    judged by what it does."""
    code = getattr(inspect.unwrap(pipeline_class.__call__), "__code__", None)
    return code is not None and "cache_context" in code.co_names


def pick_device(requested: str | None = None) -> str:
    import torch

    if requested:
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_placement(devices: Mapping[str, str], device_map: str) -> None:
    """Refuse a pipeline whose components (name -> device type) are not all on GPUs.

    diffusers' "balanced" map gives a component too large for the free memory of the GPU
    whose turn it is to the CPU without a word (and, past the first, leaves it out of
    ``hf_device_map``), so the components' own devices are what count: a worker so placed
    would make images many times slower, or run out of host memory mid-job.
    """
    off = sorted(name for name, kind in devices.items() if kind != "cuda")
    if off:
        raise ValueError(
            f"deviceMap {device_map!r} left {', '.join(off)} off the GPUs: the pod's GPUs "
            "lack the free memory for them; raise gpu.count"
        )


@dataclass
class LoadedPipeline:
    """One pipeline in memory, with what its ``__call__`` accepts."""

    pipeline: Any
    device: str
    accepted: frozenset[str]
    # Which ``__call__`` argument carries each API parameter that families name differently
    # (None: the model has none, and the gateway refuses the parameter at submit).
    targets: Mapping[ApiArgument, str | None]
    # Arguments the spec fixes for every call (``fixedArguments``).
    fixed: Mapping[str, int | float]
    # Sides are rounded up to this: the VAE's downscale times the transformer's 2x2 packing.
    size_multiple: int
    # The ``strength`` of image-to-image pipelines that have one (the spec's fixed one, or
    # the pipeline's default): they denoise only ``steps * strength`` of the steps.
    strength: float | None
    # One pipeline call at a time: diffusers pipelines keep per-call state on themselves.
    lock: threading.Lock
    # How long loading took: importing torch and diffusers, then reading the weights into
    # the pipeline (the autoscaler reports both as part of a cold start).
    import_seconds: float = 0.0
    pipeline_seconds: float = 0.0

    @classmethod
    def load(
        cls,
        path: Path,
        device: str | None = None,
        dtype: str | None = None,
        options: PipelineOptions | None = None,
    ) -> LoadedPipeline:
        """Load with ``from_pretrained`` and apply the model's loading options.

        ``dtype`` (the worker's flag) wins over ``options.dtype``; an option the pipeline
        cannot honour is an error here, at start-up, not a silently slower worker.
        """
        started = time.monotonic()
        # In a thread of its own: advice on many large files may block while it queues.
        threading.Thread(target=prefetch, args=(path,), name="prefetch", daemon=True).start()
        quiet_libraries()
        import diffusers
        import torch
        from diffusers.hooks import FirstBlockCacheConfig

        imported = time.monotonic()

        options = options or PipelineOptions()
        device = pick_device(device)
        dtype = dtype or (None if options.dtype == "auto" else options.dtype)
        torch_dtype = (
            getattr(torch, dtype)
            if dtype
            else (torch.bfloat16 if device.startswith("cuda") else torch.float32)
        )
        loader = diffusers.DiffusionPipeline
        if options.class_name:
            try:
                loader = pipeline_class(diffusers, options.class_name)
            except LookupError as error:
                raise ValueError(f"spec.pipeline.className: {error}") from None
        # Straight from safetensors to the device (a few times faster on a GPU than loading to
        # host memory and moving); diffusers maps a whole pipeline onto its own device only.
        straight = (
            options.device_map is None and options.cpu_offload == "none" and device == pick_device()
        )
        if options.device_map and not (device.startswith("cuda") and torch.cuda.is_available()):
            # Without a GPU diffusers' "balanced" map loads everything on the CPU, silently.
            raise ValueError(f"deviceMap {options.device_map!r} needs CUDA devices")
        device_map = options.device_map or (device if straight else None)
        pipeline = loader.from_pretrained(str(path), dtype=torch_dtype, device_map=device_map)
        if options.device_map:
            log.info("placed by deviceMap %r: %s", options.device_map, pipeline.hf_device_map)
            check_placement(
                {
                    name: component.device.type
                    for name, component in pipeline.components.items()
                    if isinstance(component, torch.nn.Module)
                },
                options.device_map,
            )
            # Each component stays on its GPU behind accelerate's hooks, which move its
            # inputs there and its outputs back. The pipeline makes its latents on the
            # execution device (its first hooked component's, not always cuda:0): the
            # generators belong there too.
            device = str(pipeline._execution_device)
        elif options.cpu_offload == "none":
            if not straight:
                pipeline.to(device)
        elif not device.startswith("cuda"):
            raise ValueError(f"cpuOffload {options.cpu_offload!r} needs a CUDA device")
        elif options.cpu_offload == "model":
            pipeline.enable_model_cpu_offload()
        else:
            pipeline.enable_sequential_cpu_offload()
        denoiser = getattr(pipeline, "transformer", None) or getattr(pipeline, "unet", None)
        if options.attention:
            if denoiser is None or not hasattr(denoiser, "set_attention_backend"):
                raise ValueError(f"{type(pipeline).__name__} cannot change its attention backend")
            denoiser.set_attention_backend(options.attention)
        if options.vae_tiling:
            pipeline.vae.enable_tiling()
        if options.vae_slicing:
            pipeline.vae.enable_slicing()
        if options.first_block_cache is not None or options.fp8_weights:
            if denoiser is None or not hasattr(denoiser, "enable_cache"):
                raise ValueError(f"{type(pipeline).__name__} has no diffusers denoiser to change")
            if options.first_block_cache is not None:
                if not sets_cache_context(type(pipeline)):
                    raise ValueError(
                        "spec.pipeline.firstBlockCache: "
                        + no_cache_context(type(pipeline).__name__)
                    )
                denoiser.enable_cache(FirstBlockCacheConfig(threshold=options.first_block_cache))
            if options.fp8_weights:
                denoiser.enable_layerwise_casting(
                    storage_dtype=torch.float8_e4m3fn, compute_dtype=torch_dtype
                )
        if options.compile and denoiser is not None:
            # Compiling the repeated blocks once is far quicker than the whole model.
            if hasattr(denoiser, "compile_repeated_blocks"):
                # First-Block-Cache decides per step outside the graph (a graph break).
                denoiser.compile_repeated_blocks(fullgraph=options.first_block_cache is None)
            else:
                denoiser.compile()
        pipeline.set_progress_bar_config(disable=True)
        parameters = inspect.signature(pipeline.__call__).parameters
        strength = options.fixed_arguments.get(
            "strength", getattr(parameters.get("strength"), "default", None)
        )
        targets = _check_targets(type(pipeline).__name__, frozenset(parameters), options)
        _check_fixed(type(pipeline).__name__, parameters, targets, options)
        scale = getattr(pipeline, "vae_scale_factor", None)
        log.info("loaded %s from %s on %s", type(pipeline).__name__, path, device)
        return cls(
            pipeline=pipeline,
            device=device,
            accepted=frozenset(parameters),
            targets=targets,
            fixed=options.fixed_arguments,
            size_multiple=max(SIZE_MULTIPLE, 2 * scale if isinstance(scale, int) else 0),
            strength=float(strength)
            if isinstance(strength, int | float) and strength > 0
            else None,
            lock=threading.Lock(),
            import_seconds=imported - started,
            pipeline_seconds=time.monotonic() - imported,
        )

    def arguments(
        self,
        params: JobParams,
        sources: list[Image.Image],
        on_step: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        """Keyword arguments for ``__call__``, mapped from API names by introspection."""
        import torch

        width = round_up(params.width, self.size_multiple)
        height = round_up(params.height, self.size_multiple)
        generator_device = "cpu" if self.device == "mps" else self.device
        kwargs: dict[str, Any] = {
            **self.fixed,
            "prompt": params.prompt,
            "num_inference_steps": params.num_inference_steps,
            "num_images_per_prompt": params.num_images,
            # One generator per image: image i is the same whether it is made alone or in a
            # batch, and the same for the same seed.
            "generator": [
                torch.Generator(generator_device).manual_seed((params.seed + i) % 2**64)
                for i in range(params.num_images)
            ],
            "output_type": "pil",
        }
        name = type(self.pipeline).__name__
        size = self.targets["image_size"]
        if size == SIZE_ARGUMENTS:
            kwargs["width"], kwargs["height"] = width, height
        elif not sources:
            raise UnsupportedParameter(f"{name} takes no image size")
        else:
            # Image-to-image pipelines without a size (StableDiffusionImg2ImgPipeline and its
            # kin) make images the size of their source: hand them the source at the size
            # asked for, scaled to cover it and centre-cropped, so nothing is stretched. One
            # whose spec refuses image_size (it resizes to an area of its own) gets it at the
            # model's default size, so the image billed is the image made.
            sources = [
                ImageOps.fit(source, (width, height), Image.Resampling.LANCZOS)
                for source in sources
            ]
        guidance = self.targets["guidance_scale"]
        if guidance is not None:
            kwargs[guidance] = params.guidance_scale
        if params.negative_prompt:
            negative = self.targets["negative_prompt"]
            if negative is None:
                raise UnsupportedParameter(f"{name} does not take a negative_prompt")
            kwargs[negative] = params.negative_prompt
            # Flux-style pipelines only use a negative prompt under true classifier-free
            # guidance; give it the requested guidance so the negative prompt has an effect.
            if "true_cfg_scale" in self.accepted and guidance != "true_cfg_scale":
                kwargs["true_cfg_scale"] = params.guidance_scale
        if sources:
            if "image" not in self.accepted:
                raise UnsupportedParameter(
                    f"{type(self.pipeline).__name__} does not take a source image"
                )
            kwargs["image"] = sources[0] if len(sources) == 1 else sources
            self._check_strength(params.num_inference_steps)
            # Pipelines that resize their input to a target area would change the output
            # size; ask for exactly the requested area instead.
            if "max_area" in self.accepted:
                kwargs["max_area"] = width * height
            if "_auto_resize" in self.accepted:
                kwargs["_auto_resize"] = False
        if on_step is not None and "callback_on_step_end" in self.accepted:
            kwargs["callback_on_step_end"] = _step_callback(on_step, params.num_inference_steps)
        unknown = set(kwargs) - self.accepted
        if unknown:
            raise UnsupportedParameter(
                f"{type(self.pipeline).__name__} does not accept {', '.join(sorted(unknown))}"
            )
        return kwargs

    def _check_strength(self, steps: int) -> None:
        """With no step left to denoise, such pipelines fail deep inside torch; say what to
        ask for instead."""
        if self.strength is not None and int(steps * self.strength) < 1:
            raise UnsupportedParameter(
                f"{type(self.pipeline).__name__} denoises num_inference_steps x {self.strength}"
                f" steps: ask for at least {math.ceil(1 / self.strength)} steps"
            )

    def generate(
        self,
        params: JobParams,
        sources: list[Image.Image] | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> list[Image.Image]:
        """Run the pipeline; exactly ``params.width`` x ``params.height`` images come back."""
        import torch

        kwargs = self.arguments(params, sources or [], on_step)
        with self.lock, torch.inference_mode():
            output = self.pipeline(**kwargs)
        return [crop_center(image, params.width, params.height) for image in output.images]

    def generate_batch(
        self,
        jobs: Sequence[tuple[JobParams, list[Image.Image]]],
        on_step: Callable[[int, int], None] | None = None,
    ) -> list[list[Image.Image]]:
        """Run jobs that share a ``batch_key`` as one pipeline call; each job's images, in
        order.

        Every image is its own prompt entry with its own seeded generator, as it is made
        alone, so batching changes an image by floating-point noise only.
        """
        import torch

        calls = [self.arguments(params, sources) for params, sources in jobs]
        counts = [params.num_images for params, _ in jobs]
        merged = dict(calls[0], num_images_per_prompt=1)
        for name in _PER_IMAGE:
            if name in merged:
                merged[name] = [
                    call[name] for call, n in zip(calls, counts, strict=True) for _ in range(n)
                ]
        merged["generator"] = [generator for call in calls for generator in call["generator"]]
        differing = {
            name
            for call in calls[1:]
            for name in call.keys() | merged.keys()
            if name not in _PER_IMAGE | {"generator", "num_images_per_prompt"}
            and call.get(name) != merged.get(name)
        }
        if differing:
            raise ValueError(f"these jobs cannot share a call: {', '.join(sorted(differing))}")
        if on_step is not None and "callback_on_step_end" in self.accepted:
            merged["callback_on_step_end"] = _step_callback(on_step, jobs[0][0].num_inference_steps)
        with self.lock, torch.inference_mode():
            images = iter(self.pipeline(**merged).images)
        return [
            [crop_center(next(images), params.width, params.height) for _ in range(n)]
            for (params, _), n in zip(jobs, counts, strict=True)
        ]


# The arguments a batched call takes as one entry per image, in job order.
_PER_IMAGE = frozenset({"prompt", "negative_prompt", "image"})


def _step_callback(on_step: Callable[[int, int], None], total: int) -> Any:
    """A ``callback_on_step_end`` that reports each finished step out of ``total``."""

    def callback(_pipe: Any, step: int, _timestep: Any, tensors: dict[str, Any]) -> Any:
        on_step(step + 1, total)
        return tensors

    return callback


def _check_fixed(
    name: str,
    parameters: Mapping[str, inspect.Parameter],
    targets: Mapping[ApiArgument, str | None],
    options: PipelineOptions,
) -> None:
    """Each fixed argument names a number argument of the pipeline's own, which no request
    sets (the spec's model refuses the arguments every call sets; these depend on the
    pipeline), so a value that every call would overwrite or choke on stops the worker."""
    fixed = set(options.fixed_arguments)
    named = {
        n for n, p in parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    if not fixed <= named:
        raise ValueError(
            f"spec.pipeline.fixedArguments names {', '.join(sorted(fixed - named))}, "
            f"which {name} does not take"
        )
    carried = {part for target in targets.values() if target for part in target.split(",")}
    if targets["negative_prompt"] is not None and "true_cfg_scale" in named:
        carried.add("true_cfg_scale")  # set to the request's guidance with a negative prompt
    if fixed & carried:
        raise ValueError(
            f"spec.pipeline.fixedArguments {', '.join(sorted(fixed & carried))} would also "
            "carry a request's value: list that API parameter in spec.pipeline.unsupported"
        )
    strength = options.fixed_arguments.get("strength", 1)
    if not 0 < strength <= 1:
        raise ValueError(
            f"spec.pipeline.fixedArguments.strength: {name} denoises num_inference_steps x"
            f" strength steps; it must be above 0 and at most 1, not {strength}"
        )
    for argument in sorted(fixed):
        annotation = parameters[argument].annotation
        if not takes_a_number(parameters[argument]):
            raise ValueError(
                f"spec.pipeline.fixedArguments.{argument}: {name} takes "
                f"{inspect.formatannotation(annotation)} there, not a number"
            )


# The words of an annotation written as text that leave it a plain number (or None).
_NUMBER_WORDS = frozenset({"int", "float", "None", "Optional", "Union"})


def takes_a_number(parameter: inspect.Parameter) -> bool:
    """Whether an argument is declared an int or a float (optionally None), or, undeclared,
    defaults to one: a number given for a tensor, a list or a flag fails every call."""
    annotation = parameter.annotation
    if annotation is inspect.Parameter.empty:
        default = parameter.default
        return isinstance(default, int | float) and not isinstance(default, bool)
    if isinstance(annotation, str):  # a module with postponed annotations
        words = set(re.split(r"[\[\],|\s]+", annotation)) - {""}
    else:
        members = (
            typing.get_args(annotation)
            if typing.get_origin(annotation)
            in (
                typing.Union,
                types.UnionType,
            )
            else (annotation,)
        )
        words = {getattr(m, "__name__", repr(m)) for m in members}
        words = {"None" if w == "NoneType" else w for w in words}
    return words <= _NUMBER_WORDS and bool(words & {"int", "float"})


def _check_targets(
    name: str, accepted: frozenset[str], options: PipelineOptions
) -> Mapping[ApiArgument, str | None]:
    """The argument for each API parameter; a declared one the pipeline lacks, or one it
    cannot take that the spec does not refuse (so the gateway would let it through), is an
    error at start-up rather than a failed job."""
    targets = options.resolve_arguments(accepted)
    for api_name, target in options.arguments.items():
        if not set(target.split(",")) <= accepted:
            raise ValueError(
                f"spec.pipeline.arguments.{api_name} names {target!r}, which {name} does not take"
            )
    lacking = sorted(n for n, target in targets.items() if target is None)
    undeclared = [n for n in lacking if n not in options.refused]
    if undeclared:
        raise ValueError(
            f"{name} cannot take {', '.join(undeclared)}: declare "
            + f"spec.pipeline.unsupported: [{', '.join(undeclared)}]"
            + " so that the gateway refuses it at submit"
        )
    return targets
