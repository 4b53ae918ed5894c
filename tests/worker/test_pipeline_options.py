"""Loading options from an ImageModel's spec.pipeline reach the diffusers pipeline."""

from __future__ import annotations

import inspect
import os
import typing
from pathlib import Path

import pytest
import torch
from diffusers.hooks import FirstBlockCacheConfig
from PIL import Image
from pydantic import ValidationError

from tessera.runtime.worker.options import NO_CACHE_CONTEXT, PipelineOptions
from tessera.runtime.worker.pipeline import (
    WEIGHT_SUFFIXES,
    LoadedPipeline,
    prefetch,
    quiet_libraries,
    sets_cache_context,
    takes_a_number,
)
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


def test_first_block_cache_is_refused_at_load_where_the_loop_sets_no_cache_context(
    demo_models_dir: Path,
) -> None:
    """No className in the spec: the worker reads the class from model_index.json and judges
    the loaded pipeline by its own code."""
    options = PipelineOptions.model_validate({"firstBlockCache": 0.2})
    with pytest.raises(ValueError, match=r"spec\.pipeline\.firstBlockCache: FluxKontextPipeline"):
        LoadedPipeline.load(demo_models_dir / "tessera-demo-edit", "cpu", options=options)


def test_why_first_block_cache_is_refused_on_kontext(demo_models_dir: Path) -> None:
    """What the refusal spares a user: the cache enabled anyway fails the first job."""
    loaded = LoadedPipeline.load(demo_models_dir / "tessera-demo-edit", "cpu")
    loaded.pipeline.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.2))
    source = Image.new("RGB", (64, 64), "teal")
    with pytest.raises(ValueError, match="No cache context is set"):
        loaded.generate(job_params(prompt="a kite", width=64, height=64, seed=9), [source])


def test_the_operators_list_matches_diffusers() -> None:
    """The pipelines the operator refuses by className are exactly those of the installed
    diffusers whose denoiser takes cache hooks and whose loop sets no cache context."""
    import diffusers
    from diffusers.models.cache_utils import CacheMixin

    found = set()
    for name in dir(diffusers):
        pipeline_class = getattr(diffusers, name) if name.endswith("Pipeline") else None
        if not (
            isinstance(pipeline_class, type)
            and issubclass(pipeline_class, diffusers.DiffusionPipeline)
        ):
            continue
        try:
            hints = typing.get_type_hints(pipeline_class.__init__)
        except NameError:  # an annotation naming a library that is not installed
            continue
        denoiser = hints.get("transformer") or hints.get("unet")
        cached = isinstance(denoiser, type) and issubclass(denoiser, CacheMixin)
        if cached and not sets_cache_context(pipeline_class):
            found.add(name)
    assert found == NO_CACHE_CONTEXT
    assert sets_cache_context(diffusers.FluxPipeline)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"className": "NoSuchPipeline"}, "no pipeline class"),
        # diffusers' names are case-sensitive: the worker says which class was meant.
        ({"className": "Fluxpipeline"}, "no pipeline class 'Fluxpipeline' .did you mean Flux"),
        # A model class loads no pipeline (its from_pretrained fails on model_index.json).
        ({"className": "UNet2DModel"}, r"className: diffusers has no pipeline class 'UNet2D"),
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


@pytest.mark.parametrize(
    ("fixed", "message"),
    [
        # FluxPipeline sets true_cfg_scale to the request's guidance with a negative prompt.
        ({"true_cfg_scale": 4.0}, "fixedArguments true_cfg_scale would also carry a request's"),
        ({"sigmas": 1}, r"fixedArguments\.sigmas: FluxPipeline takes list\[float\] \| None"),
        ({"latents": 0}, r"fixedArguments\.latents: FluxPipeline takes .*Tensor"),
        ({"kwargs": 1}, "fixedArguments names kwargs, which FluxPipeline does not take"),
    ],
)
def test_a_fixed_argument_every_call_would_overwrite_or_choke_on_stops_the_worker(
    demo_models_dir: Path, fixed: dict[str, float], message: str
) -> None:
    options = PipelineOptions(fixed_arguments=fixed)
    with pytest.raises(ValueError, match=message):
        LoadedPipeline.load(demo_models_dir / "tessera-demo", "cpu", options=options)


def test_a_fixed_number_argument_reaches_every_call(demo_models_dir: Path) -> None:
    options = PipelineOptions(fixed_arguments={"max_sequence_length": 32})
    loaded = LoadedPipeline.load(demo_models_dir / "tessera-demo", "cpu", options=options)
    negative = PARAMS.model_copy(update={"negative_prompt": "fog"})
    assert loaded.arguments(negative, [])["max_sequence_length"] == 32
    [image] = loaded.generate(PARAMS)
    assert image.size == (96, 64)


@pytest.mark.parametrize(
    ("annotation", "number"),
    [
        ("float", True),
        ("int | None", True),
        ("Optional[int]", True),
        ("Union[int, float]", True),
        ("bool", False),
        ("list[float] | None", False),
        ("Optional[torch.Tensor]", False),
    ],
)
def test_postponed_annotations_are_read_as_numbers_or_not(annotation: str, number: bool) -> None:
    """Some diffusers modules postpone their annotations: the worker reads the text."""
    parameter = inspect.Parameter("x", inspect.Parameter.KEYWORD_ONLY, annotation=annotation)
    assert takes_a_number(parameter) is number


def test_an_auto_pipeline_class_is_a_pipeline_class(demo_models_dir: Path) -> None:
    options = PipelineOptions(class_name="AutoPipelineForText2Image")
    loaded = LoadedPipeline.load(demo_models_dir / "tessera-demo", "cpu", options=options)
    assert type(loaded.pipeline).__name__ == "FluxPipeline"


def test_openmp_threads_sleep_when_idle_unless_the_user_says_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    quiet_libraries()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    quiet_libraries()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_unknown_options_are_rejected() -> None:
    with pytest.raises(ValidationError):
        PipelineOptions.model_validate({"turbo": True})


def test_prefetch_asks_for_every_weight_file(demo_models_dir: Path) -> None:
    folder = demo_models_dir / "tessera-demo"
    weights = [f for f in folder.rglob("*") if f.suffix in WEIGHT_SUFFIXES]
    assert weights
    assert prefetch(folder) == sum(f.stat().st_size for f in weights)
