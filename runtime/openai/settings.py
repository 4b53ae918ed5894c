"""Limits of the OpenAI-compatible API: how long a request is held, and what it may upload."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OpenAISettings:
    # The longest a request waits for its job; the OpenAI SDK gives up after 600 s. A client
    # that announces a shorter read timeout (the SDK's ``x-stainless-read-timeout``) is
    # answered ``deadline_margin_seconds`` before it, so it never times out and resubmits.
    wait_seconds: float = 300.0
    deadline_margin_seconds: float = 1.0
    # Requests one API key may hold open at once, per server process; more get a 429.
    max_waiting_per_key: int = 16
    # A multipart edit: the whole body, how many files, how many fields and how long each
    # text field may be. Each file is also held to the source-image limits (SourceLimits).
    max_body_bytes: int = 64 * 1024 * 1024
    max_files: int = 4
    max_fields: int = 32
    max_field_bytes: int = 64 * 1024
