"""The HTTP face of the suite: one FastAPI app (``apps.server.create_app``) over the shared core.

``apps/llm`` is the OpenAI-compatible API on the core itself (models, chat, completions,
classification, adapters); the domain apps (support, sentiment, recommend) live beside it as
their own packages, each with its routers, and never import one another.
"""
