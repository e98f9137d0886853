"""One module per adapter: build examples, train, evaluate against baselines."""
