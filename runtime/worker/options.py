"""How a worker loads its pipeline: what an ImageModel's ``spec.pipeline`` says.

The operator passes these to the worker as JSON in ``TESSERA_PIPELINE`` and validates the
resource with this same model, so the two can never disagree on a field.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class PipelineOptions(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    # A diffusers class to load with instead of the one model_index.json names.
    class_name: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    # A diffusers attention backend for the denoiser, e.g. "flash" or "_native_cudnn".
    attention: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_]+$")
    cpu_offload: Literal["none", "model", "sequential"] = "none"
    vae_tiling: bool = False
    vae_slicing: bool = False
    compile: bool = False
    # First-Block-Cache (diffusers hooks): skip the denoiser's other blocks on a step whose
    # first block changed less than this; faster, and the image drifts as it grows.
    first_block_cache: float | None = Field(default=None, gt=0, le=1)
    # Keep the denoiser's weights in float8 (e4m3) and compute in ``dtype``: about half its
    # weight memory, at the cost of rounding every weight to 3 mantissa bits.
    fp8_weights: bool = False
