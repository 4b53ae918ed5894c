"""Loading options from an ImageModel's spec.pipeline reach the diffusers pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from tessera.runtime.worker.options import PipelineOptions
from tessera.runtime.worker.pipeline import WEIGHT_SUFFIXES, LoadedPipeline, prefetch
from tests.support.params import job_params

PARAMS = job_params(prompt="a kite", width=96, height=64, seed=9)


def test_options_are_applied(demo_models_dir: Path) -> None:
    options = PipelineOptions.model_validate(
        {
            "className": "FluxPipeline",
            "dtype": "float32",
            "attention": "native",
            "vaeTiling": True,
            "vaeSlicing": True,
            "firstBlockCache": 0.2,
            "fp8Weights": True,
        }
    )
    loaded = LoadedPipeline.load(demo_models_dir / "tessera-demo", "cpu", options=options)
    assert type(loaded.pipeline).__name__ == "FluxPipeline"
    assert loaded.pipeline.vae.use_tiling
    assert loaded.pipeline.vae.use_slicing
    assert loaded.pipeline.transformer.is_cache_enabled
    assert next(loaded.pipeline.transformer.parameters()).dtype == torch.float8_e4m3fn
    [image] = loaded.generate(PARAMS)
    assert image.size == (96, 64)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"className": "NoSuchPipeline"}, "no pipeline class"),
        ({"cpuOffload": "model"}, "needs a CUDA device"),
    ],
)
def test_options_the_pipeline_cannot_honour_fail_at_load(
    demo_models_dir: Path, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        LoadedPipeline.load(
            demo_models_dir / "tessera-demo", "cpu", options=PipelineOptions.model_validate(options)
        )


def test_unknown_options_are_rejected() -> None:
    with pytest.raises(ValidationError):
        PipelineOptions.model_validate({"turbo": True})


def test_prefetch_asks_for_every_weight_file(demo_models_dir: Path) -> None:
    folder = demo_models_dir / "tessera-demo"
    weights = [f for f in folder.rglob("*") if f.suffix in WEIGHT_SUFFIXES]
    assert weights
    assert prefetch(folder) == sum(f.stat().st_size for f in weights)
