"""HTTP shapes of the core API, OpenAI-compatible where OpenAI has a shape (the LoRAX/vLLM
convention: ``model`` is an adapter name or ``"base"``).

Requests accept and ignore OpenAI fields this server does not implement (``presence_penalty``,
``user``, ...), so stock OpenAI clients work unchanged. Ranges that never depend on configuration
are checked here (422, naming the field); limits that do (max tokens, characters, batch sizes)
are checked by the core against the settings (400/413).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Annotated, Any, Literal, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StrictBool,
    StrictInt,
    StringConstraints,
    field_validator,
    model_serializer,
    model_validator,
)

from apps.http.requests import RequestModel
from core.adapters import NAME_RE
from core.config import Settings
from core.errors import InvalidRequestError
from core.logprobs import MAX_TOP_LOGPROBS
from core.prompts import Message
from core.sampling import Completion, SamplingParams

StopString = Annotated[str, StringConstraints(min_length=1, max_length=64)]  # core.sampling's MAX_STOP_CHARS

DEFAULT_MAX_TOKENS = 256
SAMPLING_EPS = 1e-5  # temperature or top_p below this decode greedily (as vLLM does)

FinishReason = Literal["stop", "length"]


def finish_reason(reason: str) -> FinishReason:
    """The engine's finish reason in OpenAI's vocabulary ("cancelled" streams have no reader left)."""
    return "length" if reason == "length" else "stop"


ModelName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        description='An adapter name from `GET /v1/models`, or `"base"` for the base model without adapter.',
        examples=["base"],
    ),
]


# Text the engine accepts: not empty, not only whitespace. Its own check (a 400 naming the field) stays the
# one that refuses; the schema states it for clients (a pydantic pattern would pre-empt the Unicode check).
NonBlankText = Annotated[str, Field(json_schema_extra={"pattern": r"\S"}, description="Not empty or only whitespace.")]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


# ---- sampling ----------------------------------------------------------------------------------


class StreamOptions(RequestModel):
    include_usage: StrictBool = Field(default=False, description="Send one last chunk with `usage` (and no choices).")


class SamplingRequest(RequestModel):
    """Fields shared by chat and text completions."""

    model_config = ConfigDict(extra="ignore")

    model: ModelName
    max_tokens: int | None = Field(
        default=None,
        ge=1,
        description=f"Most tokens to generate. Default {DEFAULT_MAX_TOKENS}; at most the server's "
        "DOMAINLLM_MAX_NEW_TOKENS (a larger value is a 400).",
    )
    temperature: float | None = Field(
        default=0.0,
        ge=0.0,
        le=5.0,
        description="0 (the default here, unlike OpenAI's 1) is greedy decoding: the same request gives "
        "the same answer. Above 0 samples from the softened distribution (below 1e-5 counts as 0).",
    )
    top_p: float | None = Field(
        default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass (sampling only; below 1e-5 is greedy)."
    )
    n: int | None = Field(default=1, description="Number of choices. Only 1 is supported.")
    stop: StopString | Annotated[list[StopString], Field(max_length=8)] | None = Field(
        default=None, description="Up to 8 strings (1-64 characters each); generation ends before the first one."
    )
    seed: int | None = Field(
        default=None,
        ge=-(2**53 - 1),
        le=2**53 - 1,
        description="Seed for sampling (an integer JSON numbers carry exactly: |seed| < 2^53); with a seed a "
        "sampled answer is reproducible.",
    )
    stream: StrictBool | None = Field(
        default=False, description="Stream the answer as server-sent events, ending with `[DONE]`."
    )
    stream_options: StreamOptions | None = None
    num_beams: int | None = Field(
        default=1, ge=1, le=8, description="Extension: beam search with this many beams (needs temperature 0)."
    )

    @field_validator("max_tokens", "temperature", "top_p", "n", "seed", "num_beams", mode="before")
    @classmethod
    def _a_number(cls, value: Any) -> Any:
        # pydantic's lax mode reads true as 1 and "5" as 5; JSON Schema (and OpenAI) say a number
        if isinstance(value, bool | str):
            raise ValueError("must be a JSON number")
        return value

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def sampling_params(self, settings: Settings) -> SamplingParams:
        """The core's decoding parameters; raises ``InvalidRequestError`` for unsupported values."""
        if self.n not in (None, 1):
            raise InvalidRequestError(f"n={self.n} is not supported: this server returns exactly one choice (n=1)")
        max_tokens = self.requested_max_tokens()
        if max_tokens is None:
            max_tokens = min(DEFAULT_MAX_TOKENS, settings.max_new_tokens)
        elif max_tokens > settings.max_new_tokens:
            raise InvalidRequestError(
                f"max_tokens is {max_tokens}; this server generates at most {settings.max_new_tokens} tokens"
            )
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        temperature = 0.0 if self.temperature is None else self.temperature
        top_p = 1.0 if self.top_p is None else self.top_p
        if temperature < SAMPLING_EPS or top_p < SAMPLING_EPS:
            # Both mean "always the top token"; sampling with them divides by ~0 or keeps no token
            # in float32, which fails the whole engine batch, other requests included.
            temperature, top_p = 0.0, 1.0
        return SamplingParams(
            max_new_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            num_beams=self.num_beams or 1,
            stop=stop,
            seed=self.seed,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, completion: Completion) -> Usage:
        return cls(
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            total_tokens=completion.prompt_tokens + completion.completion_tokens,
        )


# ---- chat --------------------------------------------------------------------------------------


class TextPart(RequestModel):
    type: Literal["text"]
    text: str


class ChatMessage(RequestModel):
    role: Literal["system", "user", "assistant"]
    # _not_empty's rule, stated for clients: some text that is not whitespace, in the string or in a part
    content: (
        NonBlankText
        | Annotated[list[TextPart], Field(json_schema_extra={"contains": {"properties": {"text": {"pattern": r"\S"}}}})]
    ) = Field(description="The text, or a list of `{type: text, text}` parts (joined). Must not be empty.")
    name: str | None = Field(default=None, description="Accepted for compatibility; ignored.")

    @field_validator("content")
    @classmethod
    def _not_empty(cls, value: str | list[TextPart]) -> str | list[TextPart]:
        text = value if isinstance(value, str) else "".join(p.text for p in value)
        if not text.strip():
            raise ValueError("message content must not be empty")
        return value

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1, description="The conversation so far, oldest first.")
    max_completion_tokens: int | None = Field(
        default=None, ge=1, description="Newer OpenAI name for `max_tokens`; wins."
    )

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [{"model": "base", "messages": [{"role": "user", "content": "What is the capital of France?"}]}]
        },
    )

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def engine_messages(self) -> list[Message]:
        return [{"role": m.role, "content": m.text} for m in self.messages]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    """What a chunk adds: the role in the first chunk, text in the next ones, nothing in the last."""

    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _drop_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # OpenAI's deltas carry only the fields they change; clients append `content` when present
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if v is not None}


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    finish_reason: FinishReason | None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed chat completion."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


# ---- text completions --------------------------------------------------------------------------

TopLogprobs = Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)]
TokenId = Annotated[StrictInt, Field(ge=0, le=2**31 - 1)]
TokenIds = Annotated[list[TokenId], Field(min_length=1)]


class CompletionRequest(SamplingRequest):
    # single_prompt's rule (a 400 naming the length), stated for clients: a list holds exactly one string
    prompt: (
        NonBlankText
        | Annotated[list[NonBlankText], Field(json_schema_extra={"minItems": 1, "maxItems": 1})]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1)]
    ) = Field(
        description="The text to continue, as is (no chat template). A list must hold exactly one string. "
        "Token ids (one prompt as a list of ids, or several as a list of lists) are taken for scoring only: "
        "with `echo: true` and `max_tokens: 0`."
    )
    max_tokens: int | None = Field(
        default=None,
        ge=0,
        description=f"Most tokens to generate. Default {DEFAULT_MAX_TOKENS}; at most the server's "
        "DOMAINLLM_MAX_NEW_TOKENS (a larger value is a 400). 0 (with `echo`) scores the prompt and generates nothing.",
    )
    echo: StrictBool = Field(
        default=False,
        description="Return the prompt before the completion; with `logprobs`, the prompt's tokens get "
        "log-probabilities too (the first token's is null).",
    )
    logprobs: TopLogprobs | None = Field(
        default=None,
        description=f"Return each token's log-probability and, per token, the `logprobs` most likely tokens "
        f"(0-{MAX_TOP_LOGPROBS}). Raw model log-probabilities (no temperature), as vLLM's.",
    )
    prompt_logprobs: TopLogprobs | None = Field(
        default=None,
        description="vLLM extension: each prompt token's log-probability, rank and the `prompt_logprobs` most "
        "likely tokens at its position, keyed by token id (`choices[].prompt_logprobs`; the first is null).",
    )
    return_token_ids: StrictBool | None = Field(
        default=None,
        description="vLLM extension: also return `prompt_token_ids` and the completion's `token_ids` (streamed: "
        "in the last chunk).",
    )
    return_tokens_as_token_ids: StrictBool | None = Field(
        default=None, description='vLLM extension: in `logprobs`, name tokens "token_id:<id>" instead of their text.'
    )
    ignore_eos: StrictBool = Field(
        default=False, description="vLLM extension: keep generating past the end-of-sequence token."
    )

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={"examples": [{"model": "base", "prompt": "The capital of France is", "max_tokens": 8}]},
    )

    @field_validator("logprobs", "prompt_logprobs", mode="before")
    @classmethod
    def _a_count(cls, value: Any) -> Any:
        # OpenAI's chat API takes `logprobs: true`; here (the legacy completions API) it is a count
        if isinstance(value, bool | str):
            raise ValueError("must be a JSON number: how many most likely tokens to list per position")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> CompletionRequest:
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens 0 generates nothing: it needs echo: true (the prompt is scored)")
        if self.token_rows() is not None and not self.scores_only:
            raise ValueError(
                "a prompt of token ids is scored, not continued, here: send it with echo: true and "
                "max_tokens: 0, or send the prompt as text"
            )
        if self.stream and (self.echo or self.logprobs is not None or self.prompt_logprobs is not None):
            raise ValueError("echo, logprobs and prompt_logprobs are not available with stream: true")
        return self

    @property
    def scores_only(self) -> bool:
        """The prompt is scored and nothing is generated (``echo`` with ``max_tokens: 0``)."""
        return self.echo and self.max_tokens == 0

    @property
    def wants_logprobs(self) -> bool:
        return self.echo or self.logprobs is not None or self.prompt_logprobs is not None

    @property
    def prompt_top(self) -> int | None:
        """How many alternatives per prompt position ``choices[].prompt_logprobs`` lists, None for none:
        ``prompt_logprobs``, else (with ``echo``) ``logprobs``, as vLLM."""
        if self.prompt_logprobs is not None:
            return self.prompt_logprobs
        return self.logprobs if self.echo else None

    def token_rows(self) -> list[list[int]] | None:
        """The prompts given as token ids, or None for a text prompt."""
        if isinstance(self.prompt, str) or not self.prompt or isinstance(self.prompt[0], str):
            return None
        if isinstance(self.prompt[0], int):
            return [cast(list[int], self.prompt)]
        return cast(list[list[int]], self.prompt)

    def single_prompt(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1 or not isinstance(self.prompt[0], str):
            raise InvalidRequestError(f"prompt must be one string (or a list of one); got a list of {len(self.prompt)}")
        return self.prompt[0]

    def sampling_params(self, settings: Settings) -> SamplingParams:
        return replace(super().sampling_params(settings), ignore_eos=self.ignore_eos)


class CompletionLogprobs(BaseModel):
    """OpenAI's (legacy) completion log-probabilities, one entry per token, in vLLM's shape."""

    text_offset: list[int] = Field(description="Where each token starts in the choice's text.")
    token_logprobs: list[float | None] = Field(description="Each token's log-probability (null: a first token).")
    tokens: list[str] = Field(description='Each token, decoded (or "token_id:<id>").')
    top_logprobs: list[dict[str, float] | None] = Field(
        description="Per token: the token itself and the `logprobs` most likely tokens at its position."
    )


class PromptLogprob(BaseModel):
    """vLLM's ``Logprob``: one token's log-probability at a prompt position."""

    logprob: float
    rank: int | None = Field(default=None, description="1: the most likely token at this position.")
    decoded_token: str | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: FinishReason | None
    logprobs: CompletionLogprobs | None = None
    prompt_logprobs: list[dict[str, PromptLogprob] | None] | None = Field(
        default=None,
        description="vLLM extension (with `prompt_logprobs`, or `echo` and `logprobs`): per prompt token, keyed "
        "by token id, its own log-probability and the most likely tokens at its position; the first is null.",
    )
    prompt_token_ids: list[int] | None = Field(default=None, description="vLLM extension (`return_token_ids`).")
    token_ids: list[int] | None = Field(default=None, description="vLLM extension (`return_token_ids`).")


class TextCompletion(BaseModel):
    """A text completion, or (with ``finish_reason`` null until the last) one streamed chunk of one."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


# ---- models and adapters -----------------------------------------------------------------------


class ModelCard(BaseModel):
    id: str = Field(description='Use as `model` in requests: an adapter name or "base".')
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "domainllm"
    kind: Literal["base", "lora"]
    root: str = Field(description="The base model every adapter runs on.")
    parent: str | None = Field(default=None, description="For an adapter: the base model it was trained on.")
    rank: int | None = None
    card: dict[str, Any] | None = Field(
        default=None, description="The adapter's card (training data, metrics), if any."
    )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class AdapterLoadRequest(RequestModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"name": "sentiment", "path": "sentiment"}]}
    )

    name: str = Field(
        min_length=1,
        max_length=64,
        json_schema_extra={"pattern": NAME_RE.pattern},  # core's validate_name refuses the rest (400)
        description="Name to serve it under: 1-64 of a-z, 0-9, '.', '_', '-', starting alphanumeric.",
    )
    path: str | None = Field(
        default=None,
        max_length=4096,
        description="Adapter folder on the server (adapter_config.json + weights). Relative paths are "
        "taken under DOMAINLLM_ADAPTERS_DIR; default: that folder's sub-folder named `name`.",
    )


class AdapterOut(BaseModel):
    id: str
    object: Literal["adapter"] = "adapter"
    rank: int
    alpha: float
    target_modules: list[str]
    size_bytes: int
    loaded_at: float
    card: dict[str, Any] = Field(default_factory=dict)
    path: str | None = Field(default=None, description="Only in the answer to an (admin) load.")


class AdapterList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AdapterOut]
    failed: dict[str, str] = Field(
        default_factory=dict, description="Adapter folders found at start that could not be loaded, with why."
    )


class AdapterDeleted(BaseModel):
    id: str
    object: Literal["adapter"] = "adapter"
    deleted: bool = True


# ---- classification ----------------------------------------------------------------------------


class ClassifyRequest(RequestModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "model": "sentiment",
                    "texts": ["Shares fell 9% after the profit warning."],
                    "labels": ["negative", "neutral", "positive"],
                }
            ]
        },
    )

    model: ModelName
    texts: list[NonBlankText] = Field(min_length=1, description="Texts to label, each on its own (batched together).")
    labels: list[NonBlankText] = Field(
        min_length=2,
        description="The candidate labels, at least 2, distinct.",
        json_schema_extra={"uniqueItems": True},
    )
    instruction: NonBlankText | None = Field(
        default=None, description="System instruction for the prompt; default: answer with one of the labels."
    )


class ClassifyResult(BaseModel):
    label: str = Field(description="The most probable label.")
    scores: dict[str, float] = Field(description="Probability of each label (sums to 1).")


class ClassifyResponse(BaseModel):
    model: str
    results: list[ClassifyResult] = Field(description="One result per input text, in order.")
