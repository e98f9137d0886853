"""The base of every request body: all its text must be real Unicode."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, field_validator


def check_unicode(value: Any) -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                "text must be valid Unicode: lone surrogate escapes such as \\ud800 are not allowed"
            ) from None
    elif isinstance(value, list | tuple):
        for item in value:
            check_unicode(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_unicode(key)
            check_unicode(item)


class RequestModel(BaseModel):
    """Base of every request body: all its text must be real Unicode.

    JSON may spell lone surrogates ("\\ud800"); Python decodes them into strings that neither UTF-8
    nor the tokenizer accept, which would fail deep in the engine. They are refused here, at the edge.
    """

    @field_validator("*", mode="after")
    @classmethod
    def _valid_unicode(cls, value: Any) -> Any:
        check_unicode(value)
        return value
