"""How a worker loads its pipeline and batches its jobs: an ImageModel's ``spec.pipeline``
and ``spec.batch``.

The operator passes the pipeline options to the worker as JSON in ``TESSERA_PIPELINE`` and
the batch as ``--batch-max-size``/``--batch-max-wait-ms``, and validates the resource with
these same models, so the two can never disagree on a field.
"""

from __future__ import annotations

from typing import Annotated, Literal

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
