"""OpenAPI for routes that read a raw file as the request body (FastAPI cannot see such a body)."""

from __future__ import annotations

from typing import Any


def file_body(*content_types: str, description: str) -> dict[str, Any]:
    """``openapi_extra`` declaring a required raw body in each of ``content_types``."""
    schema = {"type": "string", "format": "binary"}
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {ct: {"schema": schema} for ct in content_types},
        }
    }
