"""Structured API errors: {"error": {"code", "message", "fields"}}, never a stack trace."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from apps.core.context import request_id_var
from apps.core.tenancy import UnscopedQueryError

log = logging.getLogger("skyport.api")


def _flatten(detail: Any) -> Any:
    if isinstance(detail, list):
        return [_flatten(d) for d in detail]
    if isinstance(detail, dict):
        return {k: _flatten(v) for k, v in detail.items()}
    return str(detail)


def _django_validation_to_drf(exc: DjangoValidationError) -> exceptions.ValidationError:
    if hasattr(exc, "error_dict"):
        return exceptions.ValidationError({k: [m for e in v for m in e.messages] for k, v in exc.error_dict.items()})
    return exceptions.ValidationError({"non_field_errors": exc.messages})


def error_body(code: str, message: str, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if fields:
        body["fields"] = fields
    rid = request_id_var.get()
    if rid:
        body["request_id"] = rid
    return {"error": body}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, DjangoValidationError):
        exc = _django_validation_to_drf(exc)
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound("Not found.")
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or "You are not allowed to do this.")

    if not isinstance(exc, exceptions.APIException):
        if isinstance(exc, UnscopedQueryError):
            log.error("unscoped query refused: %s", exc)
        else:
            log.exception("unhandled API error")
        return Response(
            error_body("server_error", "Something went wrong on our side. Quote the request id when reporting it."),
            status=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )

    response = drf_exception_handler(exc, context)
    if response is None:  # pragma: no cover - every APIException gets a response
        return None
    detail = exc.detail
    if isinstance(exc, exceptions.ValidationError):
        fields: dict[str, Any] = {}
        message = "The request has invalid fields."
        if isinstance(detail, dict):
            fields = {k: _flatten(v) for k, v in detail.items() if k != "non_field_errors"}
            general = detail.get("non_field_errors")
            if general:
                message = " ".join(str(m) for m in general)
                if not fields:
                    fields = {}
        elif isinstance(detail, list):
            message = " ".join(str(m) for m in detail)
        response.data = error_body("invalid", message, fields or None)
    elif isinstance(exc, exceptions.ParseError):
        response.data = error_body("malformed_request", f"The request body could not be parsed: {detail}")
    else:
        code = getattr(exc, "default_code", "error")
        if isinstance(detail, dict | list):
            message = str(_flatten(detail))
        else:
            code = getattr(detail, "code", code) or code
            message = str(detail)
        response.data = error_body(str(code), message)
    return response
