"""GPU speed of full-size FLUX architectures with random weights: prints figures, asserts
nothing. Speed does not depend on the weights, so no hub access is needed.

For each model (FLUX.1-schnell, FLUX.1-dev, FLUX.1-Kontext-dev for edits) it builds the
pipeline from the published configs with random weights, saves it as safetensors, and then
for each variant (eager bf16, `torch.compile` of the repeated blocks, and each ImageModel
`spec.pipeline` option) loads it through the worker's own `LoadedPipeline.load` (straight
onto the GPU) and calls it through `LoadedPipeline.generate`, as a worker would. Printed per
variant: load time, first-call time (compilation shows here), per-image latency at batch 1,
images/s at batch 1/2/4, peak GPU memory, images per dollar at the stated hourly price, and
how far its first image is from the eager one (0 for exact levers), with published anchors
beside them. `--tiny` runs the same code path on CPU with tiny configs, for CI.

Usage: .venv/bin/python bench/gpu.py [--models schnell dev kontext] [--price 3.20]
       .venv/bin/python bench/gpu.py --tiny
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy
from PIL import Image

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

from tessera.runtime.demo import _t5_tokenizer, clip_tokenizer
from tessera.runtime.params import JobParams, OutputFormat
from tessera.runtime.worker.options import PipelineOptions
from tessera.runtime.worker.pipeline import LoadedPipeline, quiet_libraries

ANCHORS = {
    "schnell": "Replicate FLUX.1-schnell 1024² end to end: 0.72 s; our goal: 0.36 s",
    "dev": (
        "FLUX.1-dev 1024² 28 steps on one H100: 6.7 s eager bf16, 4.3 s compiled; 3.03 s end"
        " to end at Replicate (fp8, compile, cuDNN attention); our goal: 1.5 s"
    ),
    "kontext": "no published anchor for FLUX.1-Kontext-dev here",
}


@dataclass(frozen=True)
class Sizes:
    """The shapes that set the cost; full = the model cards' configs."""

    layers: int
    single_layers: int
    heads: int
    head_dim: int
    rope: tuple[int, int, int]
    vae_channels: tuple[int, ...]
    vae_layers: int
    clip: dict[str, int]
    t5: dict[str, int]


FULL = Sizes(
    layers=19,
    single_layers=38,
    heads=24,
    head_dim=128,
    rope=(16, 56, 56),
    vae_channels=(128, 256, 512, 512),
    vae_layers=2,
    # openai/clip-vit-large-patch14's text tower and google/t5-v1_1-xxl's encoder.
    clip={"hidden": 768, "ff": 3072, "heads": 12, "layers": 12, "vocab": 49408},
    t5={"hidden": 4096, "ff": 10240, "heads": 64, "layers": 24, "vocab": 32128, "kv": 64},
)
TINY = Sizes(
    layers=1,
    single_layers=1,
    heads=2,
    head_dim=16,
    rope=(4, 6, 6),
    vae_channels=(8, 8, 8, 8),
    vae_layers=1,
    clip={"hidden": 32, "ff": 37, "heads": 4, "layers": 1, "vocab": 1000},
    t5={"hidden": 32, "ff": 37, "heads": 4, "layers": 1, "vocab": 1000, "kv": 8},
)


@dataclass(frozen=True)
class Architecture:
    pipeline_class: str
    guidance_embeds: bool
    steps: int
    guidance: float
    scheduler: dict[str, Any]
    edit: bool = False


_DEV_SCHEDULER = {
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
MODELS = {
    "schnell": Architecture("FluxPipeline", False, 4, 0.0, {"shift": 1.0}),
    "dev": Architecture("FluxPipeline", True, 28, 3.5, _DEV_SCHEDULER),
    "kontext": Architecture("FluxKontextPipeline", True, 28, 2.5, _DEV_SCHEDULER, edit=True),
}


@dataclass(frozen=True)
class Variant:
    name: str
    options: dict[str, Any]
    quality: str
    needs_cuda: bool = False
    # FluxKontextPipeline (diffusers 0.42) sets no cache context, which the cache hooks need.
    for_edits: bool = True


VARIANTS = [
    Variant("eager bf16", {}, "the reference"),
    Variant("compile", {"compile": True}, "same math; floating-point noise"),
    Variant(
        "cudnn attention",
        {"attention": "_native_cudnn"},
        "exact attention, another kernel",
        needs_cuda=True,
    ),
    Variant(
        "first-block-cache 0.12",
        {"firstBlockCache": 0.12},
        "approximate: steps reuse the other blocks' residual; drift grows with the threshold",
        for_edits=False,
    ),
    Variant(
        "first-block-cache 0.12 + compile",
        {"firstBlockCache": 0.12, "compile": True},
        "as first-block-cache",
        for_edits=False,
    ),
    Variant("fp8 weights", {"fp8Weights": True}, "every denoiser weight rounded to e4m3"),
    Variant("vae tiling", {"vaeTiling": True}, "tiles blended at their seams"),
    Variant("vae slicing", {"vaeSlicing": True}, "none"),
    Variant(
        "model cpu offload",
        {"cpuOffload": "model"},
        "none; components move to the GPU per call",
        needs_cuda=True,
    ),
]


def components(architecture: Architecture, sizes: Sizes) -> dict[str, Any]:
    """The pipeline's parts with random weights, built where torch's defaults say."""
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    clip_tokens = clip_tokenizer()
    vae = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(sizes.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(sizes.vae_channels),
        block_out_channels=sizes.vae_channels,
        layers_per_block=sizes.vae_layers,
        latent_channels=16,
        norm_num_groups=min(32, sizes.vae_channels[0]),
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=0.3611,
        shift_factor=0.1159,
    )
    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=sizes.layers,
        num_single_layers=sizes.single_layers,
        attention_head_dim=sizes.head_dim,
        num_attention_heads=sizes.heads,
        joint_attention_dim=sizes.t5["hidden"],
        pooled_projection_dim=sizes.clip["hidden"],
        guidance_embeds=architecture.guidance_embeds,
        axes_dims_rope=sizes.rope,
    )
    clip = sizes.clip
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=clip["hidden"],
            intermediate_size=clip["ff"],
            num_attention_heads=clip["heads"],
            num_hidden_layers=clip["layers"],
            vocab_size=clip["vocab"],
            projection_dim=clip["hidden"],
            bos_token_id=clip_tokens.bos_token_id,
            eos_token_id=clip_tokens.eos_token_id,
            pad_token_id=clip_tokens.eos_token_id,
        )
    )
    t5 = sizes.t5
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=t5["vocab"],
            d_model=t5["hidden"],
            d_kv=t5["kv"],
            d_ff=t5["ff"],
            num_layers=t5["layers"],
            num_heads=t5["heads"],
            feed_forward_proj="gated-gelu",
        )
    )
    parts: dict[str, Any] = {
        "scheduler": diffusers.FlowMatchEulerDiscreteScheduler(**architecture.scheduler),
        "vae": vae,
        "transformer": transformer,
        "text_encoder": text_encoder,
        "tokenizer": clip_tokens,
        "text_encoder_2": text_encoder_2,
        "tokenizer_2": _t5_tokenizer(),
    }
    if architecture.edit:
        parts.update(image_encoder=None, feature_extractor=None)
    return parts


def build(path: Path, architecture: Architecture, sizes: Sizes, device: str) -> float:
    """Save a random-weight pipeline as safetensors; the seconds it took. Built on the
    device in bf16 (full size: 17 B parameters would take minutes to initialise on a CPU),
    then dropped from the page cache, so the load that follows reads the disk."""
    import diffusers
    import torch

    started = time.monotonic()
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            pipeline = getattr(diffusers, architecture.pipeline_class)(
                **components(architecture, sizes)
            )
    finally:
        torch.set_default_dtype(previous)
    pipeline.save_pretrained(path)
    del pipeline
    _free()
    for file in path.rglob("*.safetensors"):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return time.monotonic() - started


def _free() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class Result:
    variant: Variant
    load_seconds: float = 0.0
    first_call_seconds: float = 0.0
    latency: dict[int, float] = field(default_factory=dict)  # batch -> seconds per call
    peak_gib: float | None = None
    drift: float = 0.0  # mean absolute 8-bit difference of image 1 from the eager one
    skipped: str = ""

    def images_per_second(self, batch: int) -> float:
        return batch / self.latency[batch]


def job(architecture: Architecture, size: int, batch: int) -> JobParams:
    return JobParams(
        prompt="a lighthouse on a cliff at dusk, oil painting",
        negative_prompt=None,
        width=size,
        height=size,
        num_images=batch,
        num_inference_steps=architecture.steps,
        guidance_scale=max(architecture.guidance, 1.0),
        seed=7,
        output_format=OutputFormat.PNG,
        response_format="url",
    )


def timed(call: Callable[[], Any], device: str) -> tuple[float, Any]:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    value = call()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, value


def measure(
    path: Path,
    architecture: Architecture,
    variant: Variant,
    args: argparse.Namespace,
    reference: Image.Image | None,
) -> tuple[Result, Image.Image | None]:
    import torch

    result = Result(variant)
    if variant.needs_cuda and args.device != "cuda":
        result.skipped = "needs CUDA"
        return result, None
    if architecture.edit and not variant.for_edits:
        result.skipped = f"{architecture.pipeline_class} sets no cache context for the hooks"
        return result, None
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    options = PipelineOptions.model_validate(variant.options)
    loaded = LoadedPipeline.load(path, args.device, options=options)
    result.load_seconds = loaded.pipeline_seconds
    source = Image.new("RGB", (args.size, args.size), (90, 120, 160))
    sources = [source] if architecture.edit else []

    def call(batch: int) -> tuple[float, list[Image.Image]]:
        params = job(architecture, args.size, batch)
        return timed(lambda: loaded.generate(params, sources), args.device)

    result.first_call_seconds, [image] = call(1)
    for batch in args.batches:
        result.latency[batch] = statistics.median(call(batch)[0] for _ in range(args.runs))
    if args.device == "cuda":
        result.peak_gib = torch.cuda.max_memory_allocated() / 2**30
    if reference is not None:
        difference = numpy.asarray(image, numpy.int16) - numpy.asarray(reference, numpy.int16)
        result.drift = float(numpy.abs(difference).mean())
    return result, image


def report(name: str, results: list[Result], args: argparse.Namespace, build_s: float) -> None:
    architecture = MODELS[name]
    print(
        f"\n== {name} ({architecture.pipeline_class}, {args.size}x{args.size},"
        f" {architecture.steps} steps, {args.device}, random weights built in {build_s:.1f} s)"
    )
    print(f"   anchor: {ANCHORS[name]}")
    batches = "".join(f"  img/s b{batch}" for batch in args.batches)
    print(
        f"   {'variant':34s} {'load s':>7s} {'1st s':>7s} {'s/img':>7s}{batches}"
        f" {'peak GiB':>9s} {'img/$':>8s} {'drift':>6s}  quality cost"
    )
    for result in results:
        if result.skipped:
            print(f"   {result.variant.name:34s} skipped: {result.skipped}")
            continue
        rates = "".join(f" {result.images_per_second(b):9.2f}" for b in args.batches)
        best = max(result.images_per_second(b) for b in args.batches)
        peak = f"{result.peak_gib:9.1f}" if result.peak_gib is not None else f"{'n/a':>9s}"
        print(
            f"   {result.variant.name:34s} {result.load_seconds:7.2f}"
            f" {result.first_call_seconds:7.2f} {result.latency[1]:7.3f}{rates} {peak}"
            f" {best * 3600 / args.price:8.0f} {result.drift:6.2f}  {result.variant.quality}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny configs on CPU, for CI")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--variants", nargs="+", help="names to run (default: all)")
    parser.add_argument("--price", type=float, default=3.20, help="$ per GPU-hour (H100 SXM)")
    parser.add_argument("--runs", type=int, default=3, help="timed calls per batch size")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--scratch", type=Path, help="where the weights go (default: a temp dir)")
    args = parser.parse_args()
    quiet_libraries()
    import torch

    if 1 not in args.batches:
        args.batches.insert(0, 1)
    args.device = "cpu" if args.tiny else "cuda"
    args.size = 64 if args.tiny else 1024
    sizes = TINY if args.tiny else FULL
    if not args.tiny and not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU machine, or pass --tiny")
    variants = [v for v in VARIANTS if not args.variants or v.name in args.variants]
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {device_name}, torch"
        f" {torch.__version__}, ${args.price:.2f}/h"
    )
    scratch = Path(tempfile.mkdtemp(prefix="tessera-gpu-", dir=args.scratch))
    try:
        for name in args.models:
            path = scratch / name
            build_seconds = build(path, MODELS[name], sizes, args.device)
            results: list[Result] = []
            reference = None
            for variant in variants:
                result, image = measure(path, MODELS[name], variant, args, reference)
                _free()  # the variant's pipeline, before the next one loads
                if reference is None:
                    reference = image
                results.append(result)
            report(name, results, args, build_seconds)
            shutil.rmtree(path)  # full size: 34 GB each
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
