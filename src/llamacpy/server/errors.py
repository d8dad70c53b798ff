"""Errors the HTTP server answers with, in llama-server's / OpenAI's shape.

Owns: `APIError` (status code + message + OpenAI error type) and `error_body`, the one JSON shape every error
response has: {"error": {"code": 400, "message": "...", "type": "invalid_request_error"}}.
Must not: know about routes or the engine.
"""

from __future__ import annotations

# llama-server's error_type -> (HTTP status, "type" string), as format_error_response in server.cpp
ERROR_TYPES = {
    "invalid_request": (400, "invalid_request_error"),
    "authentication": (401, "authentication_error"),
    "permission": (403, "permission_error"),
    "not_found": (404, "not_found_error"),
    "too_large": (413, "invalid_request_error"),
    "server": (500, "server_error"),
    "not_supported": (501, "not_supported_error"),
    "unavailable": (503, "unavailable_error"),
}


class APIError(Exception):
    """An error to answer a request with: `kind` is a key of ERROR_TYPES."""

    def __init__(self, message: str, kind: str = "invalid_request"):
        super().__init__(message)
        self.message = message
        self.code, self.type = ERROR_TYPES[kind]

    def body(self) -> dict:
        return error_body(self.message, self.code, self.type)


def error_body(message: str, code: int, type_: str) -> dict:
    return {"error": {"code": code, "message": message, "type": type_}}


def invalid(message: str) -> APIError:
    return APIError(message, "invalid_request")


def unavailable(message: str) -> APIError:
    return APIError(message, "unavailable")


LOADING = APIError("Loading model", "unavailable")
