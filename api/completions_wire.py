"""Wire models of OpenAI's legacy Completions API (``POST /v1/completions``), as this gateway serves it.

The miners are chat models, so a prompt is answered as one user message (as LiteLLM and
OpenRouter serve chat models on this route): the text that comes back is the model's answer to
the prompt, not a raw continuation of it. What a chat model cannot do is refused with a 400 naming
the field, never dropped in silence: token-id prompts (they need the model's tokenizer), ``suffix``
(fill-in-the-middle), ``echo`` with ``logprobs`` (the prompt's own log probabilities, which
loglikelihood evaluations need) and ``best_of`` beyond ``n``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_core import PydanticCustomError

from shared.protocol import (
    MAX_OUTPUT_TOKENS,
    MAX_UIDS,
    MIN_TIMEOUT,
    REQUEST_CONFIG,
    SamplingParameters,
    StreamOptions,
    logit_bias_is_openais,
    null_means_default,
    stop_is_bounded,
    stream_options_need_stream,
)

MAX_RACES = 8  # prompts x n: each is a race of DEFAULT_K miners, as n's cap on chat completions
DEFAULT_MAX_TOKENS = 16  # OpenAI's (and vLLM's) default for this route
MAX_LOGPROBS = 5
# lm-evaluation-harness's local-completions sends token ids unless told otherwise
TOKEN_PROMPTS = ("prompts of token ids are not served here (they need the model's tokenizer, and the miners' models "
                 "differ): send the text (lm-evaluation-harness: tokenized_requests=False)")


class CompletionRequest(BaseModel):
    model_config = REQUEST_CONFIG

    prompt: str | list[str] = Field(description="One prompt, or a batch of prompts (each answered n times)")
    model: str | None = None
    suffix: str | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_OUTPUT_TOKENS,
                                   description="Default 16, unless sampling_parameters.max_new_tokens sets the limit")
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int = Field(default=1, ge=1, le=MAX_RACES)
    best_of: int | None = Field(default=None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    _stream_options = stream_options_need_stream()
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    _nulls = null_means_default("n", "stream", "echo")
    stop: str | list[str] | None = None
    _stop = stop_is_bounded()
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    _logit_bias = logit_bias_is_openais()
    user: str | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)  # OpenAI: any int64

    # The subnet's extras, as on chat completions.
    task: str | None = None
    sampling_parameters: SamplingParameters | None = None
    uids: list[int] | None = Field(default=None, max_length=MAX_UIDS)
    inference_mode: str | None = None
    timeout: float | None = Field(default=None, ge=MIN_TIMEOUT, le=600, description="Deadline in seconds")

    @field_validator("prompt", mode="before")
    @classmethod
    def _text_prompts(cls, v: Any) -> Any:
        if isinstance(v, list) and v and all(isinstance(t, int) and not isinstance(t, bool) for t in v):
            raise PydanticCustomError("token_prompt", TOKEN_PROMPTS)
        if isinstance(v, list) and any(isinstance(p, list) for p in v):
            raise PydanticCustomError("token_prompt", TOKEN_PROMPTS)
        if isinstance(v, list) and not v:
            raise PydanticCustomError("empty_prompt", "prompt needs at least one prompt")
        return v

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, v: str | None) -> str | None:
        if v:
            raise PydanticCustomError("unsupported_suffix", "suffix (fill-in-the-middle) is not served: the miners "
                                      "are chat models, which answer a prompt")
        return v

    def unservable(self) -> tuple[str, str] | None:
        """(param, why) for what a chat miner cannot serve in fields that are valid alone; None if all is
        servable. Checked by the handler, so the 400 names the field (a model check named the body)."""
        if self.best_of is not None and self.best_of != self.n:
            return "best_of", ("best_of is served only equal to n (each choice is the first valid answer of its "
                               "own race; no choice is picked among several)")
        if self.echo and self.logprobs is not None:
            return "echo", ("echo with logprobs needs the prompt's own token log probabilities, which chat "
                            "miners do not give (loglikelihood evaluations cannot run here)")
        if len(self.prompts) * self.n > MAX_RACES:
            # with n = 1, the prompts are what to cut (LangChain's OpenAI batches 20 a request by default)
            return ("n" if self.n > 1 else "prompt"), (
                f"{len(self.prompts)} prompts x n = {self.n} asks for {len(self.prompts) * self.n} answers; at most "
                f"{MAX_RACES} a request (send the rest in further requests: LangChain's OpenAI with batch_size="
                f"{MAX_RACES // self.n})")
        return None

    def token_limit(self) -> int | None:
        """The chat request's ``max_tokens``: the caller's, else OpenAI's default of 16, unless the subnet's
        ``sampling_parameters.max_new_tokens`` sets the limit (it fills what the OpenAI fields leave unset, as on
        chat completions: the 16 sent always, it never counted here). None: max_new_tokens is the limit."""
        if self.max_tokens is not None:
            return self.max_tokens
        if self.sampling_parameters is not None and self.sampling_parameters.max_new_tokens is not None:
            return None
        return DEFAULT_MAX_TOKENS

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else self.prompt


class CompletionChoiceOut(BaseModel):
    text: str
    index: int
    logprobs: dict[str, Any] | None = Field(
        default=None, description="tokens, token_logprobs, top_logprobs and text_offset (with `logprobs`)")
    finish_reason: Literal["stop", "length", "content_filter"] | None


class CompletionOut(BaseModel):
    """A ``text_completion`` object (``stream: false``); with ``stream: true``, chunks of the same shape."""

    model_config = {"extra": "allow"}
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoiceOut] = Field(description="prompt i's choice j at index i * n + j")
    usage: dict[str, Any] | None = None
    system_fingerprint: str | None = Field(default=None, description="The model server's, when it gave one")
