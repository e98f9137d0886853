"""Storefront recommendations, served: catalogue and events in, a ranked, filtered, explained list out.

catalogue.py  the catalogue in Redis (items and MiniLM vectors), mirrored in a FAISS index in memory
signals.py    per-user history, decayed popularity and co-visitation in Redis
service.py    what the API and the CLI call
routes.py     /v1/recommend
schemas.py    the HTTP bodies
settings.py   DOMAINLLM_RECOMMEND_*

The recommender itself (records and file formats, the TALLRec prompt and the adapter card's
serving section, features, the blender, the LLM score, rules, the candidate pipeline) is
``domains/recommend``, shared with ranker training and the MovieLens evaluation in ``finetune/``;
the commands (``domainllm recommend ...``) are ``domainllm/recommend.py``.
"""
