"""What the benchmarks share: the request they time."""

from __future__ import annotations

from tessera.runtime.params import JobParams, OutputFormat


def demo_params(size: int, steps: int, seed: int = 1) -> JobParams:
    return JobParams(
        prompt="a lighthouse at dusk",
        negative_prompt=None,
        width=size,
        height=size,
        num_images=1,
        num_inference_steps=steps,
        guidance_scale=4.5,
        seed=seed,
        output_format=OutputFormat.PNG,
        response_format="url",
    )
