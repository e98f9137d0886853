"""Storefront recommendations: catalogue and events in, a ranked, filtered, explained list out.

items.py      Item and Event records, their validation, CSV/JSONL files with per-row errors
catalogue.py  items + MiniLM vectors in Redis, mirrored in memory with a FAISS inner-product index
signals.py    per-user history, decayed popularity and co-visitation (Redis; in memory for the eval)
prompt.py     the TALLRec prompt, split into the shared history prefix and per-item continuations
ranking.py    features, the LLM interest score, the blender (trained or hand-set)
rules.py      business rules, MMR diversity, reasons
pipeline.py   candidates -> features -> LLM shortlist -> blend -> rules -> MMR
service.py    what the API and the CLI call
evaluation.py the MovieLens ranking evaluation (``domainllm eval recommend-ranking``)
"""
