"""Training configs: one YAML file per adapter in finetune/configs/, validated before any training.

A bad config (a missing data file, an unknown label, a wrong path, nonsense numbers) fails at once
with a message naming the problem, before the model is even loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from core.errors import InvalidRequestError
from domains.sentiment import LABELS as SENTIMENT_LABELS

TASKS = ("sentiment", "support", "recommend")
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(InvalidRequestError):
    error_type = "config_error"


@dataclass
class LoraSpec:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # only the top N decoder layers get LoRA: backprop then stops there, which roughly halves CPU cost
    top_layers: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.r <= 256:
            raise ConfigError(f"lora.r must be between 1 and 256, got {self.r}")
        if self.alpha <= 0:
            raise ConfigError(f"lora.alpha must be positive, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ConfigError("lora.target_modules must name at least one module")
        if self.top_layers is not None and self.top_layers < 1:
            raise ConfigError(f"lora.top_layers must be at least 1, got {self.top_layers}")


@dataclass
class TrainConfig:
    task: Literal["sentiment", "support", "recommend"]
    adapter_name: str
    data: dict[str, str]  # role -> path relative to the shared data folder
    labels: list[str] = field(default_factory=list)
    instruction: str | None = None
    lora: LoraSpec = field(default_factory=LoraSpec)
    learning_rate: float = 2e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    epochs: int = 2
    batch_size: int = 16
    max_length: int = 128
    seed: int = 42
    max_train_rows: int | None = None  # subsample to fit the CPU time budget
    dev_rows: int = 300
    patience: int = 1  # epochs without dev improvement before stopping
    max_minutes: float = 40.0  # hard time budget; the best checkpoint so far is kept
    eval_every_steps: int | None = None  # also evaluate inside an epoch
    options: dict[str, Any] = field(default_factory=dict)  # task-specific knobs
    # labels objective: run the tokens every prompt of a batch starts with (the chat template and the
    # instruction) once per batch and repeat their KV cache; the loss is the same, the tokens fewer
    share_prompt_prefix: bool = True
    # auto: bf16 autocast where the hardware runs it fast (CUDA, or a CPU with AVX512-BF16/AMX), else fp32
    precision: Literal["auto", "fp32", "bf16"] = "auto"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if isinstance(self.lora, dict):
            unknown = set(self.lora) - {f.name for f in fields(LoraSpec)}
            if unknown:
                raise ConfigError(f"unknown lora keys: {', '.join(sorted(unknown))}")
            self.lora = LoraSpec(**self.lora)
        for name, low, high in [
            ("learning_rate", 1e-7, 1.0),
            ("epochs", 1, 100),
            ("batch_size", 1, 1024),
            ("max_length", 8, 8192),
            ("max_minutes", 0.1, 24 * 60),
        ]:
            value = getattr(self, name)
            if not low <= value <= high:
                raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
        year = self.options.get("released_by")
        if year is not None and (isinstance(year, bool) or not isinstance(year, int) or not 1870 <= year <= 2100):
            raise ConfigError(f"options.released_by must be a year (an integer from 1870 to 2100), got {year!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if not self.data:
            raise ConfigError("data must name at least one file")
        if self.task in ("sentiment", "recommend") and (
            len(self.labels) < 2 or len(set(self.labels)) != len(self.labels)
        ):
            raise ConfigError(f"{self.task} needs at least two distinct labels, got {self.labels}")

    def path(self, role: str, shared_data_dir: Path) -> Path:
        if role not in self.data:
            raise ConfigError(f"config has no data file for {role!r}; it names: {', '.join(self.data)}")
        return shared_data_dir / self.data[role]


REQUIRED_DATA = {
    "sentiment": ("fpb", "fpb_test", "tfns"),
    "support": ("bitext", "banking77"),
    "recommend": ("ratings", "movies", "tallrec_valid"),
}
ALLOWED_LABELS = {
    "sentiment": set(SENTIMENT_LABELS),
    "recommend": {"Yes", "No"},
}


def load_config(path: Path, shared_data_dir: Path) -> TrainConfig:
    """Read and validate a config, checking that every data file exists."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping")
    unknown = set(raw) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise ConfigError(f"{path.name}: unknown keys {', '.join(sorted(unknown))}")
    try:
        config = TrainConfig(**raw)
    except TypeError as exc:
        raise ConfigError(f"{path.name}: {exc}") from exc
    for role in REQUIRED_DATA[config.task]:
        config.path(role, shared_data_dir)
    for role, rel in config.data.items():
        full = shared_data_dir / rel
        if not full.exists():
            raise ConfigError(f"{path.name}: data file for {role!r} not found: {full}")
    allowed = ALLOWED_LABELS.get(config.task)
    if allowed is not None:
        bad = [label for label in config.labels if label not in allowed]
        if bad:
            raise ConfigError(f"{path.name}: unknown label(s) {bad}; {config.task} labels are {sorted(allowed)}")
    return config


def config_for(task: str) -> Path:
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    return CONFIG_DIR / f"{task}.yaml"
