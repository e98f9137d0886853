"""The recommend domain: what serving (``apps/recommend``) and training and evaluation
(``finetune/``) share, so that what is trained and evaluated is what is served.

The adapter's contract
    prompt.py     the TALLRec prompt: instruction, labels, history and target text, the split for
                  shared-prefix scoring (takes a ``render`` function), the public TALLRec prompts
    serving.py    the adapter card's ``serving`` section: written by training, read by the scorer
    scoring.py    the LLM interest score, prompted as the card says

Data
    records.py    items and events, and the CSV / JSON lines / JSON files a store brings them in
    movielens.py  the one MovieLens reader (ratings in time order, ties by movie id) and the
                  held-out ratings that training never targets

The ranking (a blender is fitted offline and applied online, on the same features)
    index.py      items with unit vectors and nearest-neighbour search (FAISS)
    signals.py    popularity with decay and co-visitation, and the in-memory signals
    ranking.py    the features and the blender (its JSON is the trained ranker's format)
    rules.py      business rules, MMR diversity, reasons
    pipeline.py   candidates -> features -> LLM shortlist -> blend -> rules -> MMR
"""
