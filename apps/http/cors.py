"""CORS for the suite: the chat widget runs on the support team's own site, so its calls are
cross-origin. Admin headers are not allowed, so a browser page can never use an admin key."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

ALLOWED_HEADERS = ["Content-Type", "X-Support-Key"]


def install_cors(app: FastAPI, origins: list[str]) -> None:
    app.add_middleware(
        CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"], allow_headers=ALLOWED_HEADERS
    )
