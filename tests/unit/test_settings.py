"""Each command's flags and ``TESSERA_*`` variables are its settings model, one to one."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from tessera.runtime.cli import build_parser
from tessera.runtime.settings import GatewaySettings, ServeSettings, WorkerSettings, settings_from

COMMANDS = {"serve": ServeSettings, "gateway": GatewaySettings, "worker": WorkerSettings}


def _subparser(name: str) -> argparse.ArgumentParser:
    [commands] = [
        action
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    ]
    return commands.choices[name]  # type: ignore[no-any-return]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_setting_is_a_flag_and_every_flag_a_setting(command: str) -> None:
    settings = COMMANDS[command]
    flags = {
        action.dest
        for action in _subparser(command)._actions
        if action.dest not in ("help", "handler")
    }
    assert flags == set(settings.model_fields) - settings.ENV_ONLY
    for action in _subparser(command)._actions:
        if action.dest in flags:
            assert action.option_strings == [f"--{action.dest.replace('_', '-')}"]


def test_a_flag_wins_over_its_variable_which_wins_over_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TESSERA_PUBLIC_URL", "https://images.example.com/")
    monkeypatch.setenv("TESSERA_CORS_ORIGIN", "https://a.example.com, https://b.example.com")
    monkeypatch.setenv("TESSERA_API_KEYS", "one,two")
    args = build_parser().parse_args(
        ["gateway", "--queue", "redis://q:6379/0", "--storage", "file:///srv", "--port", "9000"]
    )
    settings = settings_from(GatewaySettings, args)
    assert settings.base_url == "https://images.example.com"
    assert settings.port == 9000 and settings.host == "127.0.0.1"
    assert settings.cors_origin == ("https://a.example.com", "https://b.example.com")
    assert [key.get_secret_value() for key in settings.api_keys] == ["one", "two"]
    flagged = build_parser().parse_args(
        ["gateway", "--queue", "redis://q", "--storage", "file:///s", "--public-url", "http://x"]
    )
    assert settings_from(GatewaySettings, flagged).base_url == "http://x"


def test_worker_settings_read_what_the_operator_renders(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESSERA_MODEL_PARAMETERS", '{"maxSide": 1024}')
    monkeypatch.setenv("TESSERA_PRICE_PER_PATCH", "0.000002")
    monkeypatch.setenv("TESSERA_PIPELINE", '{"dtype": "bfloat16"}')
    monkeypatch.setenv("TESSERA_WORKER_ID", "flux-7d9f-abcde")
    args = build_parser().parse_args(
        ["worker", "--model", "flux", "--weights", "/weights", "--queue", "redis://q"]
    )
    settings = settings_from(WorkerSettings, args)
    assert settings.model_parameters.max_side == 1024
    assert str(settings.price_per_patch) == "0.000002"
    assert settings.pipeline.dtype == "bfloat16"
    assert settings.worker_id == "flux-7d9f-abcde"


_WORKER = ["worker", "--model", "demo", "--weights", "/weights"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["gateway", "--queue", "sqlite:///tmp/jobs.db", "--storage", "file:///s"],
            "--queue (TESSERA_QUEUE): Value error, the gateway's queue is Redis",
        ),
        (["gateway", "--storage", "file:///s"], "--queue (TESSERA_QUEUE): Field required"),
        (
            [
                "gateway",
                "--queue",
                "redis://127.0.0.1:9/0",
                "--storage",
                "file:///s",
                "--models",
                "x.yaml",
            ],
            "the gateway needs a URL-signing secret shared by every replica",
        ),
        (
            [*_WORKER, "--queue", "/etc/passwd"],
            "--queue (TESSERA_QUEUE): Value error, unsupported queue URL '/etc/passwd'",
        ),
        (
            [*_WORKER, "--queue", "sqlite://jobs.db"],
            "--queue (TESSERA_QUEUE): Value error, a sqlite queue URL needs an absolute path",
        ),
    ],
)
def test_a_command_that_cannot_start_says_why_and_exits_2(
    arguments: list[str], message: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tessera.runtime.cli", *arguments],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"TESSERA_API_KEYS": "k", "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_models_file_with_an_invalid_spec_names_the_file_and_field(tmp_path: Path) -> None:
    models = tmp_path / "models.yaml"
    models.write_text(
        "apiVersion: tessera.dev/v1alpha1\nkind: ImageModel\nmetadata: {name: m}\n"
        "spec: {weights: {demo: {}}, queue: {timeoutSeconds: 0}}\n"
    )
    result = subprocess.run(
        [
            sys.executable, "-m", "tessera.runtime.cli", "gateway",
            "--queue", "redis://127.0.0.1:9/0", "--storage", f"file://{tmp_path}",
            "--models", str(models),
        ],
        capture_output=True,
        text=True,
        env={"TESSERA_API_KEYS": "k", "TESSERA_SIGNING_SECRET": "s", "PATH": "/usr/bin:/bin"},
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"{models} (document 1): spec.queue.timeoutSeconds" in result.stderr, result.stderr
