"""``tessera serve`` refuses arguments that would fail later without saying why."""

from __future__ import annotations

import pytest

from tessera.runtime.cli import build_parser


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
