"""Evaluations, each next to its baselines: ``domainllm eval <task>`` runs them and writes bench/results."""
