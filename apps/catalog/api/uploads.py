"""Upload handling for `POST images/upload/`: the file streams to a temporary file on disk through Django's upload
handlers (never whole into memory), and a body beyond the image size limit is refused as soon as that is known."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler, StopUpload, TemporaryFileUploadHandler
from rest_framework.exceptions import ValidationError

# room for the multipart boundaries and the other form fields
FORM_OVERHEAD = 1024 * 1024


def upload_limit() -> int:
    return int(settings.SKYPORT_IMAGE_MAX_BYTES)


def too_large_message(limit: int) -> str:
    if limit >= 1024**3:
        size = f"{limit / 1024**3:g} GiB"
    elif limit >= 1024**2:
        size = f"{limit / 1024**2:g} MiB"
    else:
        size = f"{limit} bytes"
    return f"The file is larger than the limit of {size}."


class SizeLimitUploadHandler(FileUploadHandler):
    """Refuses a body announced larger than the limit before reading it, and stops reading a file as soon as it
    grows past the limit (a 400 naming the limit). Passes the data on to the next handler otherwise."""

    def __init__(self, request: Any = None, limit: int | None = None) -> None:
        super().__init__(request)
        self.limit = upload_limit() if limit is None else limit
        self.received = 0

    def handle_raw_input(
        self, input_data: Any, META: Any, content_length: int, boundary: Any, encoding: Any = None
    ) -> None:
        if content_length and content_length > self.limit + FORM_OVERHEAD:
            raise ValidationError({"file": [too_large_message(self.limit)]})

    def new_file(self, *args: Any, **kwargs: Any) -> None:
        super().new_file(*args, **kwargs)
        self.received = 0

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        self.received += len(raw_data)
        if self.received > self.limit:
            raise ValidationError({"file": [too_large_message(self.limit)]})
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None


def install_upload_handlers(request: Any) -> None:
    """Call before the body is read: size check first, then straight to a temporary file."""
    request.upload_handlers = [SizeLimitUploadHandler(request), TemporaryFileUploadHandler(request)]


class PageSizeLimitUploadHandler(SizeLimitUploadHandler):
    """The same limit for the import page: the rest of a body that is too large is read and dropped (never stored),
    the file arrives missing and `too_large` tells the page why."""

    too_large = False

    def handle_raw_input(
        self, input_data: Any, META: Any, content_length: int, boundary: Any, encoding: Any = None
    ) -> None:
        if content_length and content_length > self.limit + FORM_OVERHEAD:
            self.too_large = True

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        self.received += len(raw_data)
        if self.too_large or self.received > self.limit:
            self.too_large = True
            raise StopUpload(connection_reset=False)
        return raw_data


def install_page_upload_handlers(request: Any) -> PageSizeLimitUploadHandler:
    """install_upload_handlers for a page (its CSRF check must come after this, see the import page)."""
    limit = PageSizeLimitUploadHandler(request)
    request.upload_handlers = [limit, TemporaryFileUploadHandler(request)]
    return limit
