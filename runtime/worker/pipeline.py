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
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imagecodecs
import numpy
from PIL import Image, ImageOps

from tessera.runtime.params import JobParams, OutputFormat
from tessera.runtime.worker.options import PipelineOptions

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
    """Silence per-file progress bars and import-time notices, which bury the server's log."""
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


def pick_device(requested: str | None = None) -> str:
    import torch

    if requested:
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class LoadedPipeline:
    """One pipeline in memory, with what its ``__call__`` accepts."""

    pipeline: Any
    device: str
    accepted: frozenset[str]
    # The default ``strength`` of image-to-image pipelines that have one: they denoise only
    # ``steps * strength`` of the steps.
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
            loader = getattr(diffusers, options.class_name, None)
            if loader is None:
                raise ValueError(f"diffusers has no pipeline class {options.class_name!r}")
        # Straight from safetensors to the GPU (a few times faster than loading to host
        # memory and moving); diffusers maps a whole pipeline onto its own device only.
        straight = options.cpu_offload == "none" and device == pick_device()
        pipeline = loader.from_pretrained(
            str(path), dtype=torch_dtype, device_map=device if straight else None
        )
        if options.cpu_offload == "none":
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
        strength = getattr(parameters.get("strength"), "default", None)
        log.info("loaded %s from %s on %s", type(pipeline).__name__, path, device)
        return cls(
            pipeline=pipeline,
            device=device,
            accepted=frozenset(parameters),
            strength=strength if isinstance(strength, float) and strength > 0 else None,
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

        width, height = round_up(params.width), round_up(params.height)
        generator_device = "cpu" if self.device == "mps" else self.device
        kwargs: dict[str, Any] = {
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
        takes_size = {"width", "height"} <= self.accepted
        if takes_size:
            kwargs["width"], kwargs["height"] = width, height
        elif not sources:
            raise UnsupportedParameter(f"{type(self.pipeline).__name__} takes no image size")
        else:
            # Image-to-image pipelines without a size (StableDiffusionImg2ImgPipeline and its
            # kin) make images the size of their source: hand them the source at the size
            # asked for, scaled to cover it and centre-cropped, so nothing is stretched.
            sources = [
                ImageOps.fit(source, (width, height), Image.Resampling.LANCZOS)
                for source in sources
            ]
        if "guidance_scale" in self.accepted:
            kwargs["guidance_scale"] = params.guidance_scale
        if params.negative_prompt:
            if "negative_prompt" not in self.accepted:
                raise UnsupportedParameter(
                    f"{type(self.pipeline).__name__} does not take a negative_prompt"
                )
            kwargs["negative_prompt"] = params.negative_prompt
            # Flux-style pipelines only use a negative prompt under true classifier-free
            # guidance; give it the requested guidance so the negative prompt has an effect.
            if "true_cfg_scale" in self.accepted:
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
            total = params.num_inference_steps

            def callback(_pipe: Any, step: int, _timestep: Any, tensors: dict[str, Any]) -> Any:
                on_step(step + 1, total)
                return tensors

            kwargs["callback_on_step_end"] = callback
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
