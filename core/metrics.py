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
ADAPTERS_LOADED = Gauge(
    "domainllm_adapters_loaded", "LoRA adapters registered (servable; see domainllm_adapters_resident)"
)
ADAPTERS_RESIDENT = Gauge("domainllm_adapters_resident", "LoRA adapters whose weights are in memory")
ADAPTER_COLD_LOADS = Counter(
    "domainllm_adapter_cold_loads_total",
    "Adapters loaded into memory for a request (not at start or by an admin)",
    ["adapter"],
)
ADAPTER_EVICTIONS = Counter(
    "domainllm_adapter_evictions_total",
    "Resident adapters evicted to stay within DOMAINLLM_ADAPTER_MAX_RESIDENT (still registered)",
    ["adapter"],
)
ADAPTER_COLD_LOAD_SECONDS = Histogram(
    "domainllm_adapter_cold_load_seconds",
    "Wall time of one cold load (read the folder, add the LoRA layers)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
