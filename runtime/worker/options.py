"""How a worker loads its pipeline and batches its jobs: an ImageModel's ``spec.pipeline``
and ``spec.batch``.

The operator passes the pipeline options to the worker as JSON in ``TESSERA_PIPELINE`` and
the batch as ``--batch-max-size``/``--batch-max-wait-ms``, and validates the resource with
these same models, so the two can never disagree on a field.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Collection, Mapping
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

# The API parameters whose pipeline argument differs between families. Everything else
# (prompt, steps, seed, number of images) has the same name in every diffusers pipeline.
ApiArgument = Literal["guidance_scale", "negative_prompt", "image_size"]
API_ARGUMENTS: tuple[ApiArgument, ...] = ("guidance_scale", "negative_prompt", "image_size")
# ``image_size`` is not one argument: a pipeline takes it as width and height, or (an
# image-to-image pipeline without them) as the size of its source image.
SIZE_ARGUMENTS = "width,height"
SIZE_FROM_SOURCE = "image"


# The diffusers pipelines (0.42) whose denoiser has First-Block-Cache hooks but whose
# denoising loop never names its denoiser calls with ``cache_context``, where the hooks keep
# their state: the cache fails on their first step. The worker reads this from the loaded
# pipeline's own code (``pipeline.sets_cache_context``); this copy lets the operator and the
# gateway refuse a spec that declares such a ``className`` before a GPU is spent, and a test
# recomputes it from the installed diffusers.
NO_CACHE_CONTEXT = frozenset(
    {
        "AceStepPipeline",
        "AllegroPipeline",
        "BriaPipeline",
        "ChromaImg2ImgPipeline",
        "ChromaInpaintPipeline",
        "ChromaPipeline",
        "ChronoEditPipeline",
        "CogView4ControlPipeline",
        "Flux2KleinKVPipeline",
        "Flux2Pipeline",
        "FluxControlImg2ImgPipeline",
        "FluxControlInpaintPipeline",
        "FluxControlNetImg2ImgPipeline",
        "FluxControlNetInpaintPipeline",
        "FluxControlNetPipeline",
        "FluxControlPipeline",
        "FluxFillPipeline",
        "FluxImg2ImgPipeline",
        "FluxInpaintPipeline",
        "FluxKontextInpaintPipeline",
        "FluxKontextPipeline",
        "GlmImagePipeline",
        "HunyuanSkyreelsImageToVideoPipeline",
        "HunyuanVideoFramepackPipeline",
        "HunyuanVideoImageToVideoPipeline",
        "Kandinsky5I2IPipeline",
        "Kandinsky5I2VPipeline",
        "Kandinsky5T2IPipeline",
        "Kandinsky5T2VPipeline",
        "LTX2DFRPipeline",
        "LTX2DFRTemporalRefinePipeline",
        "LattePipeline",
        "NucleusMoEImagePipeline",
        "VisualClozeGenerationPipeline",
        "VisualClozePipeline",
        "WanVideoToVideoPipeline",
    }
)


# The ``__call__`` arguments a worker sets itself on every call, from the request or for
# its own use: a fixed value for one would be overwritten without a word, or (return_dict)
# break every call. The operator and the CRD refuse them by name; the worker checks the
# other names against the loaded pipeline's signature.
WORKER_ARGUMENTS = frozenset(
    {
        "prompt",
        "negative_prompt",
        "num_inference_steps",
        "num_images_per_prompt",
        "generator",
        "output_type",
        "return_dict",
        "width",
        "height",
        "image",
        "max_area",
        "callback_on_step_end",
        "callback_on_step_end_tensor_inputs",
    }
)
# A public keyword argument's name (a leading underscore marks a private one, as
# ``_auto_resize``, which the worker sets), as short as diffusers' own.
FIXED_ARGUMENT_NAME = r"^[A-Za-z][A-Za-z0-9_]{0,63}$"
MAX_FIXED_ARGUMENTS = 8
# Past this a number loses digits in a float64, as JSON and the CRD carry it.
LARGEST_FIXED = 2**53


def _plain_number(value: object) -> object:
    """A fixed value as given: a finite JSON number, never a string, a boolean or a NaN
    coerced into one (NaN or infinity in a pipeline's arithmetic makes black images, not
    errors)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number, not {reprlib.repr(value)}")
    # The bound first: a huge integer overflows isfinite's conversion to float.
    if abs(value) > LARGEST_FIXED or not math.isfinite(value):
        raise ValueError("must be a finite number between -2**53 and 2**53")
    return value


FixedNumber = Annotated[int | float, BeforeValidator(_plain_number)]


def introspected_arguments(accepted: Collection[str]) -> dict[ApiArgument, str | None]:
    """Which argument of a ``__call__`` taking ``accepted`` carries each API parameter, by
    diffusers' usual names; None where it has none."""
    size = None
    if {"width", "height"} <= set(accepted):
        size = SIZE_ARGUMENTS
    elif SIZE_FROM_SOURCE in accepted:
        size = SIZE_FROM_SOURCE
    return {
        "guidance_scale": "guidance_scale" if "guidance_scale" in accepted else None,
        "negative_prompt": "negative_prompt" if "negative_prompt" in accepted else None,
        "image_size": size,
    }


def pipeline_class(diffusers: Any, name: str) -> Any:
    """diffusers' pipeline class of that name (a model class or anything else it exports
    would fail in ``from_pretrained`` or ``__call__`` with an error of its own), or a
    LookupError naming, for a name off only in its case, the class meant."""
    found = getattr(diffusers, name, None)
    if isinstance(found, type) and (
        issubclass(found, diffusers.DiffusionPipeline) or name.startswith("AutoPipeline")
    ):
        return found
    meant = [n for n in dir(diffusers) if n.lower() == name.lower() and n != name]
    hint = f" (did you mean {meant[0]}?)" if meant else ""
    raise LookupError(f"diffusers has no pipeline class {name!r}{hint}")


def no_cache_context(class_name: str) -> str:
    """Why First-Block-Cache cannot run on such a pipeline, naming the field to change."""
    return (
        f"{class_name} sets no cache context around its denoiser calls, which"
        " First-Block-Cache keeps its state under (every job would fail on its first step):"
        " unset firstBlockCache for this pipeline"
    )


class PipelineOptions(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    # A diffusers class to load with instead of the one model_index.json names.
    # A public name (diffusers' classes are CamelCase): nothing private or dunder.
    class_name: str | None = Field(default=None, max_length=128, pattern=r"^[A-Z][A-Za-z0-9_]*$")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    # A diffusers attention backend for the denoiser, e.g. "flash" or "_native_cudnn".
    attention: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_]+$")
    cpu_offload: Literal["none", "model", "sequential"] = "none"
    vae_tiling: bool = False
    vae_slicing: bool = False
    compile: bool = False
    # First-Block-Cache (diffusers hooks): skip the denoiser's other blocks on a step whose
    # first block changed less than this; faster, and the image drifts as it grows.
    first_block_cache: float | None = Field(default=None, gt=0, le=1, strict=True)
    # Keep the denoiser's weights in float8 (e4m3) and compute in ``dtype``: about half its
    # weight memory, at the cost of rounding every weight to 3 mantissa bits.
    fp8_weights: bool = False
    # Spread the components over every GPU of the pod (diffusers' pipeline-level
    # device_map), for models whose components together do not fit one GPU.
    device_map: Literal["balanced"] | None = None
    # The few real differences between families: an API parameter carried by another
    # argument (Qwen-Image's real CFG is true_cfg_scale), and the ones the model cannot
    # honour, which the gateway refuses at submit (a list, not nulls in the map: kubectl
    # apply drops a null). Unnamed ones are introspected.
    arguments: dict[ApiArgument, str] = Field(default_factory=dict)
    unsupported: tuple[ApiArgument, ...] = ()
    # Pipeline arguments passed as given on every call, for a value the API's ranges cannot
    # carry: Z-Image-Turbo runs without CFG only at guidance_scale 0, below the API's 1.
    fixed_arguments: dict[Annotated[str, Field(pattern=FIXED_ARGUMENT_NAME)], FixedNumber] = Field(
        default_factory=dict, max_length=MAX_FIXED_ARGUMENTS
    )

    @field_validator("first_block_cache")
    @classmethod
    def _cache_context(cls, threshold: float | None, info: ValidationInfo) -> float | None:
        class_name = info.data.get("class_name")
        if threshold is not None and class_name in NO_CACHE_CONTEXT:
            raise ValueError(no_cache_context(class_name))
        return threshold

    @field_validator("fixed_arguments")
    @classmethod
    def _not_set_by_the_worker(cls, fixed: dict[str, int | float]) -> dict[str, int | float]:
        taken = sorted(WORKER_ARGUMENTS & set(fixed))
        if taken:
            raise ValueError(
                f"{', '.join(taken)}: the worker sets these on every call (from the request"
                " or for itself), so a fixed value would be overwritten or break every call"
            )
        return fixed

    @model_validator(mode="after")
    def _placement(self) -> Self:
        if self.device_map is not None and self.cpu_offload != "none":
            raise ValueError("deviceMap places the components itself: set cpuOffload to none")
        size = self.arguments.get("image_size", SIZE_ARGUMENTS)
        if size not in (SIZE_ARGUMENTS, SIZE_FROM_SOURCE):
            raise ValueError(
                f"arguments.image_size must be {SIZE_ARGUMENTS!r} or {SIZE_FROM_SOURCE!r}, "
                f"not {size!r}"
            )
        both = sorted(set(self.arguments) & set(self.unsupported))
        if both:
            raise ValueError(f"{', '.join(both)}: both mapped in arguments and unsupported")
        return self

    @property
    def refused(self) -> frozenset[str]:
        """The API parameters this model declares it cannot honour."""
        return frozenset(self.unsupported)

    def resolve_arguments(self, accepted: Collection[str]) -> Mapping[ApiArgument, str | None]:
        """The declared arguments over the introspected ones."""
        return {
            **introspected_arguments(accepted),
            **self.arguments,
            **dict.fromkeys(self.unsupported),
        }


# One pipeline call's jobs, and how long the first may wait for others to join it: a short
# wait, since the jobs' leases and their clients' clocks run meanwhile.
BatchSize = Annotated[int, Field(ge=1, le=64)]
BatchWaitMs = Annotated[int, Field(ge=0, le=5000)]


class BatchOptions(BaseModel):
    """How a worker batches compatible jobs: what an ImageModel's ``spec.batch`` says."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    max_size: BatchSize = 1
    max_wait_ms: BatchWaitMs = 0
