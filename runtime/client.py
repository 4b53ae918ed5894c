"""A typed client for Tessera's image API, and so for Hyperstack AI Studio's, which it mirrors.

It uses only the public contract (the ``api_key`` header, ``/base_models``, ``/images/...``),
so the same code talks to ``tessera serve``, the gateway, or Hyperstack by changing the base
URL and key. Errors are translated where they enter, into one small hierarchy:

    ClientError              anything this module raises; catch it to catch them all
    ├── ApiError             the server answered with an error (status, code, message, field)
    ├── ServerUnreachable    no answer at all: refused, unresolvable, timed out
    ├── JobFailed            the job ran and failed; the server says why
    └── WaitTimeout          the job did not finish within the caller's limit
"""

from __future__ import annotations

import base64
import mimetypes
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx

__all__ = [
    "DEFAULT_BASE_URL",
    "ApiError",
    "ClientError",
    "ImageRef",
    "JobCancelled",
    "JobFailed",
    "ModelInfo",
    "ServerUnreachable",
    "TaskInfo",
    "TesseraClient",
    "WaitTimeout",
]

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
FINISHED = frozenset({"completed", "failed", "cancelled"})
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
# Tessera holds a task request up to 60 s; shorter holds keep a progress bar moving.
DEFAULT_POLL_WAIT = 2.0


class ClientError(Exception):
    """Base class: ``str(error)`` is one readable line."""


class ApiError(ClientError):
    """An error answer: HTTP ``status``, machine ``code``, ``message``, and the ``field``."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        field: str | None = None,
        rule: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.field = field
        self.rule = rule

    def __str__(self) -> str:
        where = f"HTTP {self.status}" + (f" {self.code}" if self.code else "")
        return f"{self.message} ({where})"

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        """Tessera's envelope, FastAPI's ``detail``, or a nested ``error``; else the text."""
        try:
            body = response.json()
        except ValueError:
            body = None
        message = code = field_name = rule = None
        if isinstance(body, dict):
            error = body.get("error")
            nested: dict[str, Any] = error if isinstance(error, dict) else {}
            message = body.get("message") or nested.get("message")
            code = error if isinstance(error, str) else nested.get("code")
            field_name = body.get("field") or nested.get("field")
            rule = body.get("rule")
            detail = body.get("detail")
            if not message and detail:
                message = detail if isinstance(detail, str) else _describe_detail(detail)
        if not message:
            text = response.text.strip().replace("\n", " ")[:300]
            message = text or response.reason_phrase or "request failed"
        return cls(
            response.status_code,
            str(message),
            str(code) if code else None,
            str(field_name) if field_name else None,
            str(rule) if rule else None,
        )


def _describe_detail(detail: Any) -> str:
    """FastAPI's validation list as ``field: message``, as Tessera itself would say it."""
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        first = detail[0]
        location = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return f"{location}: {first.get('msg', 'invalid')}" if location else str(first.get("msg"))
    return str(detail)


class ServerUnreachable(ClientError):
    pass


class JobFailed(ClientError):
    def __init__(self, job_id: int, message: str):
        super().__init__(f"job {job_id} failed: {message}")
        self.job_id = job_id
        self.message = message


class JobCancelled(ClientError):
    def __init__(self, job_id: int, message: str):
        super().__init__(f"job {job_id} was cancelled: {message}")
        self.job_id = job_id


class WaitTimeout(ClientError):
    def __init__(self, job_id: int, seconds: float, status: str):
        super().__init__(
            f"job {job_id} is still {status} after {seconds:g} s; it keeps running on the server"
        )
        self.job_id = job_id
        self.status = status


@dataclass(frozen=True)
class ModelInfo:
    """One ``/base_models`` entry; ``parameters`` is its JSON Schema (may be empty)."""

    name: str
    task: str
    provider: str
    description: str
    parameters: Mapping[str, Any]
    raw: Mapping[str, Any] = field(repr=False)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ModelInfo:
        modalities = record.get("modalities") or []
        task = record.get("task") or (modalities[0] if modalities else "text-to-image")
        return cls(
            name=str(record.get("model_name") or record.get("name") or ""),
            task=str(task),
            provider=str(record.get("provider") or ""),
            description=str(record.get("description") or ""),
            parameters=record.get("parameters") or {},
            raw=record,
        )

    def default(self, parameter: str) -> Any:
        """The model's default for ``parameter``, from its schema, or None."""
        spec = self.parameters.get("properties", {}).get(parameter, {})
        return spec.get("default") if isinstance(spec, Mapping) else None


@dataclass(frozen=True)
class ImageRef:
    url: str | None
    b64_json: str | None
    width: int | None
    height: int | None
    content_type: str | None

    @property
    def extension(self) -> str:
        """``png``, ``jpg`` or ``webp``: from the content type, else the URL's path."""
        known = _EXTENSIONS.get((self.content_type or "").split(";")[0].strip())
        if known:
            return known
        suffix = Path(httpx.URL(self.url).path).suffix.lstrip(".").lower() if self.url else ""
        return {"jpeg": "jpg"}.get(suffix, suffix or "png")


@dataclass(frozen=True)
class TaskInfo:
    """``GET /images/tasks/{id}``, typed; ``raw`` keeps the body for anything else."""

    job_id: int
    status: str
    progress: int | None
    images: tuple[ImageRef, ...]
    patches: int | None
    seed: int | None
    error: str | None
    parameters: Mapping[str, Any]
    raw: Mapping[str, Any] = field(repr=False)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @classmethod
    def from_body(cls, job_id: int, body: Mapping[str, Any]) -> TaskInfo:
        result = body.get("result") or {}
        usage = result.get("usage") or {}
        error = body.get("error")
        if isinstance(error, Mapping):
            error = error.get("message") or error.get("code")
        images = tuple(
            ImageRef(
                url=item.get("url"),
                b64_json=item.get("b64_json"),
                width=item.get("width"),
                height=item.get("height"),
                content_type=item.get("content_type"),
            )
            for item in result.get("data") or []
        )
        patches = usage.get("output_tokens", usage.get("total_tokens"))
        return cls(
            job_id=int(body.get("job_id", job_id)),
            status=str(body.get("status", "unknown")),
            progress=body.get("progress"),
            images=images,
            patches=int(patches) if patches is not None else None,
            seed=result.get("seed"),
            error=str(error) if error else None,
            parameters=result.get("parameters") or {},
            raw=body,
        )


ProgressCallback = Callable[[TaskInfo], None]


class TesseraClient:
    """Submit jobs, follow them, fetch their images.

    ``transport`` lets tests swap the network (``httpx.MockTransport``) without a server.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str = "",
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._api = httpx.Client(
            base_url=self.base_url + "/",
            headers={"api_key": api_key, "Accept": "application/json"},
            timeout=timeout,
            transport=transport,
        )
        # Signed URLs carry their own authority; the key must not travel to them (they may
        # point at object storage run by someone else).
        self._files = httpx.Client(timeout=timeout, transport=transport, follow_redirects=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._api.close()
        self._files.close()

    # -- requests -------------------------------------------------------------------------

    def _send(self, client: httpx.Client, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = client.request(method, url, **kwargs)
        except httpx.TimeoutException as error:
            raise ServerUnreachable(f"{self.base_url} did not answer in time ({error})") from error
        except httpx.TransportError as error:
            raise ServerUnreachable(f"cannot reach {self.base_url}: {error}") from error
        if response.is_error:
            raise ApiError.from_response(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(self._api, method, path.lstrip("/"), **kwargs)
        try:
            return response.json()
        except ValueError:
            raise ApiError(
                response.status_code,
                f"the server answered {path} with something that is not JSON",
                "response.invalid",
            ) from None

    # -- the API --------------------------------------------------------------------------

    def models(self, task: str | None = None) -> list[ModelInfo]:
        params: dict[str, str] = {"inference": "true"}
        if task:
            params["modalities"] = task
        body = self._json("GET", "/base_models", params=params)
        records = body.get("models", []) if isinstance(body, Mapping) else body
        return [ModelInfo.from_record(r) for r in records if isinstance(r, Mapping)]

    def submit_generation(self, request: Mapping[str, Any]) -> int:
        """POST ``/images/generations``; returns the job id at once."""
        return int(self._json("POST", "/images/generations", json=dict(request))["job_id"])

    def submit_edit(self, request: Mapping[str, Any]) -> int:
        """POST ``/images/edits`` (the request carries ``image_url``); returns the job id."""
        return int(self._json("POST", "/images/edits", json=dict(request))["job_id"])

    def upload(self, path: Path) -> str:
        """Upload a local image through the signed-URL flow; returns the ``image_url`` to send."""
        data = path.read_bytes()
        grant = self._json("GET", "/images/signed-url")
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        self._send(
            self._files,
            "PUT",
            grant["signed_url"],
            content=data,
            headers={"Content-Type": content_type},
        )
        return str(grant["filename"])

    def task(self, job_id: int, wait: float = 0.0) -> TaskInfo:
        """The task now, or once its status changes within ``wait`` seconds."""
        params = {"wait": f"{wait:g}"} if wait > 0 else {}
        body = self._json(
            "GET", f"/images/tasks/{job_id}", params=params, timeout=self.timeout + wait
        )
        return TaskInfo.from_body(job_id, body)

    def cancel(self, job_id: int) -> TaskInfo:
        """POST ``/images/tasks/{job_id}/cancel``: the job stops and is never billed."""
        return TaskInfo.from_body(job_id, self._json("POST", f"/images/tasks/{job_id}/cancel"))

    def wait(
        self,
        job_id: int,
        *,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
        poll_wait: float = DEFAULT_POLL_WAIT,
    ) -> TaskInfo:
        """Follow a job to the end with ``?wait=`` long-polls; raise ``JobFailed`` if it fails.

        A server that ignores ``wait`` (answering at once) is polled every ``poll_wait``
        seconds instead, so the same loop works against any compatible server.
        """
        started = time.monotonic()
        previous: str | None = None
        while True:
            remaining = None if timeout is None else timeout - (time.monotonic() - started)
            hold = poll_wait if remaining is None else max(0.0, min(poll_wait, remaining))
            asked = time.monotonic()
            info = self.task(job_id, wait=hold)
            if on_progress is not None:
                on_progress(info)
            if info.status == "failed":
                raise JobFailed(job_id, info.error or "the server gave no reason")
            if info.status == "cancelled":
                raise JobCancelled(job_id, info.error or "the server gave no reason")
            if info.finished:
                return info
            if timeout is not None and time.monotonic() - started >= timeout:
                raise WaitTimeout(job_id, timeout, info.status)
            early = hold - (time.monotonic() - asked)
            if info.status == previous and early > 0:
                time.sleep(early)  # an unchanged answer that came early: `wait` was ignored
            previous = info.status

    def download(self, image: ImageRef, destination: Path) -> Path:
        """Write one result image to ``destination`` (from ``b64_json`` or its signed URL)."""
        if image.b64_json:
            data = base64.b64decode(image.b64_json)
        elif image.url:
            data = self._send(self._files, "GET", image.url).content
        else:
            raise ClientError("the result carries neither a url nor b64_json")
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(data)
        return destination
