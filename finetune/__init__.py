"""Dataset builders, LoRA training, evaluation with baselines side by side, and reports.

finetune imports core (prompts, engine, registry); the adapters it writes under data/adapters/ are
what the core loads by name. Training data is read from the shared data folder (a setting) and is
never copied into the project.
"""
