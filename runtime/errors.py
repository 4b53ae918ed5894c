"""The errors Tessera raises, each knowing its HTTP status and machine-readable code.

    TesseraError
    ├── InvalidParameter      422  a request field breaks a rule (names the field and rule)
    │   ├── ModalityIncompatible  400  an edit sent to a text-to-image model, or the reverse
    │   └── IdempotencyMismatch   an Idempotency-Key reused with another body
    ├── Unauthorized          401  missing or unknown API key
    ├── Forbidden             403  a valid key that may not do this (usage needs an admin key)
    ├── NotFound              404
    │   ├── ModelNotFound         lists the models that do exist
    │   ├── JobNotFound           also raised for another key's job, so ids leak nothing
    │   └── FileNotFound          unknown, expired or badly signed file URL
    ├── UploadUsed            409  a signed upload URL that was already PUT to
    ├── JobFinished           409  a cancel that came after the job completed or failed
    ├── PayloadTooLarge       413  a request body, upload or fetched image over its limit
    ├── RateLimited           429  too many requests from one key; says when to retry
    ├── QueueFull             429  the model's queue holds its limit; answered with Retry-After
    ├── StoreUnavailable      503  the job store cannot be reached; the request lost nothing
    └── StorageUnavailable    503  result storage (S3) stayed unreachable through every retry

The API turns every one of them into the same JSON envelope in one place
(``tessera.runtime.api.errors``); everything else is a bug and becomes a logged 500.
"""

from __future__ import annotations

from typing import Any, ClassVar


class TesseraError(Exception):
    """Base class; ``code`` is stable and meant for programs, ``message`` for people."""

    status_code: ClassVar[int] = 400
    code: ClassVar[str] = "request.invalid"

    def __init__(self, message: str, *, field: str | None = None, rule: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.rule = rule

    def headers(self) -> dict[str, str]:
        """HTTP headers the answer carries beside the envelope."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        """The Hyperstack error envelope, plus the machine code and offending field."""
        body: dict[str, Any] = {
            "code": self.status_code,
            "message": self.message,
            "status": "error",
            "error": self.code,
        }
        if self.field is not None:
            body["field"] = self.field
        if self.rule is not None:
            body["rule"] = self.rule
        return body


class InvalidParameter(TesseraError):
    status_code = 422
    code = "parameter.invalid"


class ModalityIncompatible(InvalidParameter):
    status_code = 400
    code = "modality.incompatible"


class Unauthorized(TesseraError):
    status_code = 401
    code = "auth.invalid_key"


class Forbidden(TesseraError):
    status_code = 403
    code = "auth.forbidden"


class NotFound(TesseraError):
    status_code = 404
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model.not_found"

    def __init__(self, name: str, available: list[str]):
        listing = ", ".join(sorted(available)) or "none"
        super().__init__(
            f"model {name!r} does not exist; available models: {listing}",
            field="model",
            rule="known_model",
        )
        self.available = sorted(available)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "available_models": self.available}


class JobNotFound(NotFound):
    code = "job.not_found"

    def __init__(self, job_id: int):
        super().__init__(f"job {job_id} does not exist")


class IdempotencyMismatch(InvalidParameter):
    code = "idempotency.mismatch"

    def __init__(self, job_id: int):
        super().__init__(
            f"this Idempotency-Key was used in the last 24 h for job {job_id} with another "
            "body or Cancel-After; send the same ones to get that job, or use a new key",
            field="Idempotency-Key",
            rule="same_body",
        )
        self.job_id = job_id


class JobFinished(TesseraError):
    status_code = 409
    code = "job.finished"

    def __init__(self, job_id: int, status: str):
        super().__init__(
            f"job {job_id} is already {status}; only a queued or running job can be cancelled"
        )


class FileNotFound(NotFound):
    code = "file.not_found"


class UploadUsed(TesseraError):
    status_code = 409
    code = "upload.used"


class PayloadTooLarge(TesseraError):
    status_code = 413
    code = "payload.too_large"


class RateLimited(TesseraError):
    status_code = 429
    code = "rate.limited"

    def __init__(self, message: str, *, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "retry_after": self.retry_after}

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class QueueFull(TesseraError):
    status_code = 429
    code = "queue.full"

    def __init__(self, model: str, limit: int, retry_after_seconds: int):
        super().__init__(
            f"the queue of model {model!r} is full ({limit} jobs waiting); "
            f"retry in {retry_after_seconds} s",
            field="model",
            rule="max_queued",
        )
        self.retry_after_seconds = retry_after_seconds

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_seconds)}


class StoreUnavailable(TesseraError):
    status_code = 503
    code = "store.unavailable"


class StorageUnavailable(TesseraError):
    status_code = 503
    code = "storage.unavailable"
