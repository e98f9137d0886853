"""The core's own API, OpenAI-compatible: one router module per resource, gathered in ``routers``."""

from fastapi import APIRouter

from apps.llm import adapters, chat, classify, completions, models

routers: list[APIRouter] = [models.router, chat.router, completions.router, classify.router, adapters.router]
