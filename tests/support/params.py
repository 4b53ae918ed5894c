"""Resolved job parameters for tests that talk to stores and pipelines directly."""

from __future__ import annotations

from typing import Any

from tessera.runtime.params import JobParams, OutputFormat

_BASE = JobParams(
    prompt="a test scene",
    negative_prompt=None,
    width=64,
    height=48,
    num_images=1,
    num_inference_steps=1,
    guidance_scale=4.5,
    seed=1,
    output_format=OutputFormat.PNG,
    response_format="url",
)


def job_params(**changes: Any) -> JobParams:
    """Small, fast defaults; validated again after the changes."""
    return JobParams.model_validate({**_BASE.model_dump(), **changes})
