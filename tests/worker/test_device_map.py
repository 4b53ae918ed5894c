"""``spec.pipeline.deviceMap``: what a CPU can prove about spreading a pipeline over GPUs.

The worker hands ``deviceMap`` to ``from_pretrained`` as diffusers' pipeline-level
``device_map``, whose one documented strategy is "balanced". Here, with a real tiny
pipeline and diffusers' own placement code: the values diffusers takes, what it does where
it sees no GPU, where it would put FLUX.2-dev's components on one and on two H100s, and the
worker's refusals. That the placed pipeline then makes images on two GPUs needs a machine
with two (docs/line-up.md says what to run there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import diffusers
import pytest
import torch
from diffusers.pipelines.pipeline_loading_utils import _assign_components_to_devices
from pydantic import ValidationError

from tessera.runtime.worker.options import PipelineOptions
from tessera.runtime.worker.pipeline import LoadedPipeline, check_placement

BALANCED = PipelineOptions(device_map="balanced")
GB = 10**9
# FLUX.2-dev in bfloat16 (2 bytes a parameter): its 32B transformer and Mistral-Small-3.1-24B
# text encoder (the model card and Mistral's), and its VAE (about 84M parameters).
FLUX2_COMPONENTS = {"transformer": 64 * GB, "text_encoder": 48 * GB, "vae": GB // 6}
H100_FREE = 79 * GB  # an 80 GB H100's free memory once CUDA's context is up


@pytest.fixture
def from_pretrained_calls(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The ``device_map`` of every ``from_pretrained`` call the worker makes."""
    calls: list[Any] = []
    original = diffusers.DiffusionPipeline.from_pretrained.__func__  # type: ignore[attr-defined]

    def counting(cls: type, *args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("device_map"))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", classmethod(counting))
    return calls


def test_balanced_is_the_only_map_the_spec_takes() -> None:
    assert PipelineOptions.model_validate({"deviceMap": "balanced"}).device_map == "balanced"
    for other in ("auto", "sequential", "cuda"):
        with pytest.raises(ValidationError, match="deviceMap"):
            PipelineOptions.model_validate({"deviceMap": other})


def test_diffusers_refuses_model_level_maps_for_a_pipeline(demo_models_dir: Path) -> None:
    # "auto" is a model-level map (accelerate splitting one model's layers): a pipeline
    # refuses it, which is why the spec offers "balanced" alone.
    with pytest.raises(NotImplementedError, match="auto not supported"):
        diffusers.FluxPipeline.from_pretrained(demo_models_dir / "tessera-demo", device_map="auto")


def test_diffusers_balanced_without_a_gpu_loads_everything_on_the_cpu(
    demo_models_dir: Path,
) -> None:
    pipeline = diffusers.FluxPipeline.from_pretrained(
        demo_models_dir / "tessera-demo", device_map="balanced"
    )
    assert pipeline.hf_device_map is None
    devices = {
        name: component.device.type
        for name, component in pipeline.components.items()
        if isinstance(component, torch.nn.Module)
    }
    assert set(devices.values()) == {"cpu"}
    # So the worker, had it loaded, would refuse it, naming every component.
    with pytest.raises(ValueError, match="left text_encoder, text_encoder_2, transformer, vae"):
        check_placement(devices, "balanced")


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_worker_refuses_a_device_map_without_gpus_before_loading(
    demo_models_dir: Path,
    from_pretrained_calls: list[Any],
    monkeypatch: pytest.MonkeyPatch,
    device: str,
) -> None:
    # A pod whose GPUs are not visible (no device plugin, a CPU node) as well as --device cpu.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="deviceMap 'balanced' needs CUDA devices"):
        LoadedPipeline.load(demo_models_dir / "tessera-demo", device, options=BALANCED)
    assert from_pretrained_calls == []


def test_the_worker_refuses_a_device_map_with_cpu_offload() -> None:
    with pytest.raises(ValidationError, match="deviceMap places the components itself"):
        PipelineOptions.model_validate({"deviceMap": "balanced", "cpuOffload": "model"})


def test_flux2_on_two_h100s_puts_the_transformer_and_text_encoder_on_different_gpus() -> None:
    # diffusers' own assignment (largest component first, GPUs in turn, then back).
    placed = _assign_components_to_devices(FLUX2_COMPONENTS, {0: H100_FREE, 1: H100_FREE})
    assert placed == {0: ["transformer"], 1: ["text_encoder", "vae"]}
    check_placement({"transformer": "cuda", "text_encoder": "cuda", "vae": "cuda"}, "balanced")


def test_flux2_on_one_h100_leaves_its_text_encoder_on_the_cpu_and_the_worker_refuses() -> None:
    placed = _assign_components_to_devices(FLUX2_COMPONENTS, {0: H100_FREE})
    assert placed == {0: ["transformer", "vae"], "cpu": ["text_encoder"]}
    devices = {"transformer": "cuda", "vae": "cuda", "text_encoder": "cpu"}
    with pytest.raises(ValueError, match=r"left text_encoder off the GPUs.*raise gpu\.count"):
        check_placement(devices, "balanced")


def test_a_component_diffusers_left_out_of_its_map_is_caught_by_its_device() -> None:
    # diffusers records only the last component it sends to the CPU (each replaces the one
    # before in its map); the ones before still load there, so the worker asks each one.
    placed = _assign_components_to_devices(
        {"transformer": 70 * GB, "text_encoder": 20 * GB, "text_encoder_2": 15 * GB},
        {0: H100_FREE},
    )
    assert placed == {0: ["transformer"], "cpu": ["text_encoder_2"]}
    devices = {"transformer": "cuda", "text_encoder": "cpu", "text_encoder_2": "cpu"}
    with pytest.raises(ValueError, match="left text_encoder, text_encoder_2 off"):
        check_placement(devices, "balanced")
