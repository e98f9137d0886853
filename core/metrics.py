"""Prometheus metrics of the core; the server exposes them at /metrics."""

from prometheus_client import Counter, Gauge, Histogram

BATCH_SIZE = Histogram(
    "domainllm_batch_size",
    "Rows per micro-batch run by the engine",
    ["kind"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
BATCH_SECONDS = Histogram("domainllm_batch_seconds", "Wall time of one engine batch", ["kind"])
QUEUE_WAIT_SECONDS = Histogram(
    "domainllm_queue_wait_seconds",
    "Time a job waited before its batch started",
    ["kind"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
QUEUE_DEPTH = Gauge("domainllm_queue_depth", "Jobs waiting for the engine")
QUEUE_SECONDS = Gauge(
    "domainllm_queue_seconds", "Estimated seconds of work queued for the engine (its bound's measure)"
)
RUNNING_ROWS = Gauge("domainllm_engine_running_rows", "Rows of the batch the engine is running now; 0 when idle")
TOKENS_GENERATED = Counter("domainllm_tokens_generated_total", "Completion tokens generated", ["adapter"])
PROMPT_TOKENS = Counter("domainllm_prompt_tokens_total", "Prompt tokens processed", ["adapter"])
ENGINE_REQUESTS = Counter("domainllm_engine_requests_total", "Engine jobs by kind and adapter", ["kind", "adapter"])
ADAPTERS_LOADED = Gauge("domainllm_adapters_loaded", "LoRA adapters currently loaded")
