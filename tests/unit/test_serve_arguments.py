"""``tessera serve`` refuses arguments that would fail later without saying why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tessera.runtime.cli import build_parser
from tessera.runtime.config import ConfigError, introspected_options
from tessera.runtime.settings import ServeSettings, settings_from


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("https://app.example.com", "https://app.example.com"),
        ("http://localhost:3000/", "http://localhost:3000"),
        ("*", "*"),
    ],
)
def test_cors_origins_are_kept_as_browsers_send_them(given: str, kept: str) -> None:
    args = build_parser().parse_args(["serve", "--demo", "--cors-origin", given])
    assert args.cors_origin == [kept]


@pytest.mark.parametrize("given", ["app.example.com", "https://app.example.com/path", "ftp://x"])
def test_a_cors_origin_that_could_never_match_is_refused(
    given: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["serve", "--cors-origin", given])
    assert exit_.value.code == 2
    assert "expected an origin such as https://app.example.com" in capsys.readouterr().err


def test_openai_limits_are_read_as_numbers() -> None:
    args = build_parser().parse_args(
        ["serve", "--openai-wait-seconds", "2.5", "--openai-max-waiting", "3"]
    )
    assert (args.openai_wait_seconds, args.openai_max_waiting) == (2.5, 3)


@pytest.mark.parametrize(
    ("flag", "given"),
    [
        ("--openai-wait-seconds", "0"),
        ("--openai-wait-seconds", "nan"),
        ("--openai-wait-seconds", "soon"),
        ("--openai-max-waiting", "-1"),
        ("--openai-max-waiting", "1.5"),
    ],
)
def test_an_openai_limit_that_would_refuse_everything_is_refused(
    flag: str, given: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        settings_from(ServeSettings, build_parser().parse_args(["serve", flag, given]))
    assert exit_.value.code == 2
    assert flag in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--rate-limit-submit", "--rate-limit-poll", "--rate-limit-b64"])
def test_a_rate_limit_that_cannot_be_parsed_is_refused(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["serve", flag, "ten per second"])
    assert exit_.value.code == 2
    assert "ten per second" in capsys.readouterr().err
    args = build_parser().parse_args(["serve", flag, "5/second;100/minute"])
    assert "5/second;100/minute" in vars(args).values()


@pytest.mark.parametrize("class_name", ["UNet2DModel", "__class__", "fluxpipeline"])
def test_a_model_folder_naming_no_pipeline_class_is_refused_at_start(
    tmp_path: Path, class_name: str
) -> None:
    """``serve --model`` reads the class that model_index.json names to learn its arguments;
    a model class or another export of diffusers is no pipeline (its ``__call__`` would make
    every parameter look unsupported, and the worker fail later)."""
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    with pytest.raises(ConfigError, match=f"no pipeline class {class_name!r}"):
        introspected_options(tmp_path)
