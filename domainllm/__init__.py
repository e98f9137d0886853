"""domainllm: domain application services on one shared LLM core."""

__version__ = "0.1.0"
