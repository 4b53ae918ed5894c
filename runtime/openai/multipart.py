"""Reading a multipart ``images.edit`` body within limits, so it cannot become a memory hole.

The body is counted as it streams in and refused past ``max_body_bytes``; Starlette's parser
bounds the number of files and fields and the length of each text field, and spools files to
disk past 1 MiB. Files are read only once the model is known and the count checked against
it, one at a time; they then travel as ``data:`` references through the same source checks
as a native edit (``tessera.runtime.sources``), so nothing here decodes an image.
"""

from __future__ import annotations

import base64
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from tessera.runtime.api.bodylimit import BodyTooLarge
from tessera.runtime.errors import InvalidParameter, PayloadTooLarge
from tessera.runtime.models import ModelSpec
from tessera.runtime.openai.schema import EditFields, check_image_count
from tessera.runtime.openai.settings import OpenAISettings
from tessera.runtime.sources import SourceLimits, off_the_loop

IMAGE_FIELDS = ("image", "image[]")
_IMAGE_TYPE = re.compile(r"^image/[A-Za-z0-9.+-]{1,64}$")


@dataclass
class EditForm:
    fields: dict[str, str] = field(default_factory=dict)
    # The images, spooled by the parser and not read yet, in the order sent.
    uploads: list[UploadFile] = field(default_factory=list)
    has_mask: bool = False

    def request(self) -> EditFields:
        """The text fields, validated as the JSON body of a generation is."""
        if not self.uploads:
            raise InvalidParameter(
                "image is required: upload one or more image files",
                field="image",
                rule="required",
            )
        try:
            return EditFields.model_validate(self.fields)
        except ValidationError as error:
            raise RequestValidationError(error.errors(include_url=False)) from None

    async def sources(self, model: ModelSpec, limits: SourceLimits) -> list[str]:
        """The images as ``data:`` references, once ``model`` is known to take them all."""
        if self.has_mask:
            raise InvalidParameter(
                f"model {model.name!r} edits whole images and takes no mask (it does no "
                "inpainting); omit mask",
                field="mask",
                rule="unsupported",
            )
        check_image_count(len(self.uploads), model)
        references = []
        for index, upload in enumerate(self.uploads):
            references.append(await _data_url(upload, index, limits))
            await upload.close()
        return references


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body is larger than {limit} bytes", rule="max_body_bytes")


async def _data_url(upload: UploadFile, index: int, limits: SourceLimits) -> str:
    data = await upload.read(limits.max_bytes + 1)
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(
            f"image {index + 1} is larger than {limits.max_bytes} bytes",
            field="image",
            rule="max_bytes",
        )
    media = upload.content_type if _IMAGE_TYPE.match(upload.content_type or "") else "image/png"
    # Encoding 20 MB takes tens of milliseconds: not on the event loop.
    return f"data:{media};base64," + await off_the_loop(_base64, data)


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@contextlib.asynccontextmanager
async def edit_form(request: Request, settings: OpenAISettings) -> AsyncIterator[EditForm]:
    """The parsed form; its spooled files are removed when the block ends."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise InvalidParameter(
            f"images/edits takes multipart/form-data, not {content_type or 'no content type'}",
            rule="multipart",
        )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > settings.max_body_bytes:
        raise _too_large(settings.max_body_bytes)

    try:
        # One more file than images, for a mask (refused later, with the reason).
        # The app's BodyLimit counts the body as it streams (at max_body_bytes for this route).
        form = await request.form(
            max_files=settings.max_files + 1,
            max_fields=settings.max_fields,
            max_part_size=settings.max_field_bytes,
        )
    except BodyTooLarge:
        raise _too_large(settings.max_body_bytes) from None
    except HTTPException as error:
        raise InvalidParameter(
            f"the multipart body is refused: {error.detail}", rule="multipart"
        ) from None
    except ClientDisconnect:
        raise InvalidParameter("the body ended before it was complete", rule="multipart") from None
    try:
        yield _collect(form.multi_items())
    finally:
        await form.close()


def _collect(items: list[tuple[str, UploadFile | str]]) -> EditForm:
    result = EditForm()
    for name, value in items:
        if name == "mask":
            result.has_mask = True
        elif name in IMAGE_FIELDS:
            if not isinstance(value, UploadFile):
                raise InvalidParameter(
                    f"{name} must be an uploaded file, not a text field",
                    field="image",
                    rule="file",
                )
            result.uploads.append(value)
        elif isinstance(value, UploadFile):
            raise InvalidParameter(
                f"{name} must be a text field, not a file", field=name, rule="text"
            )
        elif name in result.fields:
            raise InvalidParameter(f"{name} is given twice", field=name, rule="unique")
        else:
            result.fields[name] = value
    return result
