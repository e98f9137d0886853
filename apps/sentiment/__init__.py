"""The financial news sentiment monitor: ingestion, enrichment, monitoring, delivery, API and CLI.

Layout: ``items``/``ingest``/``feeds`` (the three ways in), ``store`` and ``alerts`` (Redis),
``enrich`` with ``watchlist`` and ``topics``, ``monitor`` (rules), ``delivery``, ``service`` (one
context per namespace that the API, the CLI and ``workers/`` share), ``routes``, ``cli``, ``replay``.
"""
