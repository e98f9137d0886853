"""Decoding parameters and results, shared by the engine, the server and the apps."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.errors import InvalidRequestError

MAX_STOP_STRINGS = 8
MAX_STOP_CHARS = 64
GREEDY_BELOW = 1e-5  # temperatures below this decode greedily, as in vLLM


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    num_beams: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False  # benchmarks: always produce max_new_tokens

    def __post_init__(self) -> None:
        if not 1 <= self.max_new_tokens <= 32_768:
            raise InvalidRequestError(f"max_new_tokens must be between 1 and 32768, got {self.max_new_tokens}")
        if not 0.0 <= self.temperature <= 5.0:
            raise InvalidRequestError(f"temperature must be between 0 and 5, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidRequestError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 1 <= self.num_beams <= 8:
            raise InvalidRequestError(f"num_beams must be between 1 and 8, got {self.num_beams}")
        if self.num_beams > 1 and self.temperature > 0:
            raise InvalidRequestError("beam search is deterministic: use temperature 0 with num_beams > 1")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise InvalidRequestError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(self.stop)}")
        if self.seed is not None and not -(2**63) <= self.seed < 2**63:
            raise InvalidRequestError(f"seed must be a 64-bit integer, got {self.seed}")
        for s in self.stop:
            if not isinstance(s, str) or not 0 < len(s) <= MAX_STOP_CHARS:
                raise InvalidRequestError(f"each stop string must be 1-{MAX_STOP_CHARS} characters")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW  # a vanishing temperature would overflow the softmax


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" (eos or a stop string) or "length"
    prompt_tokens: int
    completion_tokens: int
    token_ids: list[int] = field(default_factory=list)


@dataclass
class ContinuationScore:
    logprob: float  # sum of the continuation's token log-probabilities
    n_tokens: int
    next_label_probs: dict[str, float] | None = None  # P(answer label | prefix + continuation)
