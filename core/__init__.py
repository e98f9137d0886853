"""The shared LLM host: settings, base model, adapter registry, inference engine, micro-batching.

core knows nothing of the apps; apps, workers and finetune import core, never the reverse.
"""

import os

# Nothing in this suite may fetch a model from a hub at run time: every model is a local folder.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
