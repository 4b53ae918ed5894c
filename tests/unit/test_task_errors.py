"""What a failed task tells its client: our own reasons, never a library's internals."""

from __future__ import annotations

from tessera.runtime.worker.pipeline import UnsupportedParameter
from tessera.runtime.worker.runner import describe_failure


def test_internal_errors_show_a_stable_message() -> None:
    for error in (ZeroDivisionError("division by zero"), RuntimeError("CUDA out of memory")):
        message = describe_failure(41, error)
        assert message == "the pipeline failed with an internal error (logged with job id 41)"


def test_a_request_the_pipeline_cannot_run_says_why() -> None:
    error = UnsupportedParameter("FluxPipeline does not take a negative_prompt")
    assert describe_failure(41, error) == (
        "the pipeline cannot run this request: FluxPipeline does not take a negative_prompt"
    )
