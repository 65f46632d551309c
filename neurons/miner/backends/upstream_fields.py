"""Which fields of a request the reference miner sends its model server: those of OpenAI's chat completion
it knows, and nothing else unless the operator names it.

The API passes a caller's unknown fields on (a miner may serve with what it likes, and SDKs send OpenAI's newer
fields before any gateway knows them), and any validator may send a miner anything. A model server takes far
more than OpenAI's fields, and not all of it is for strangers: vLLM's ``chat_template`` (a Jinja template of the
caller's, rendered on the miner), ``chat_template_kwargs``, ``guided_*`` and ``structured_outputs`` grammars,
``best_of``, ``use_beam_search``, ``ignore_eos`` with ``min_tokens`` (an answer forced to run to its limit),
``prompt_logprobs``, ``priority``, ``kv_transfer_params``. Forwarded as they came, any caller on the network
could reach them on every miner. So the reference miner forwards an allow list, as LiteLLM's ``drop_params``
does: OpenAI's fields that shape the answer, the sampling extras open model servers share (``top_k``,
``min_p``, ``repetition_penalty``, ``top_a``; each dropped for a model that refuses it, ``FieldRefusals``), and
the fields the operator adds (``UPSTREAM_EXTRA_FIELDS``, e.g. ``chat_template_kwargs`` for a Qwen3 server whose
callers turn its thinking off).

Left out of OpenAI's own, for what they would do to the miner rather than the answer: ``n`` (one answer is
asked of each miner: the API races once per choice, and a miner that sends a second fails), ``service_tier``
(a hosted API bills ``priority`` higher: the caller would choose what the miner pays), ``store`` and
``metadata`` (the caller's conversation kept in the miner's account), ``prediction`` (billed by the hosted
API, no change to the answer), ``web_search_options`` (the API searches; a hosted search model bills each)
and ``audio`` (the API serves text only).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

OPENAI_FIELDS = frozenset({
    "messages", "model", "stream", "stream_options", "temperature", "top_p", "max_tokens", "max_completion_tokens",
    "stop", "seed", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "user",
    "tools", "tool_choice", "parallel_tool_calls", "functions", "function_call", "response_format", "modalities",
    "reasoning_effort", "verbosity", "prompt_cache_key", "safety_identifier",
})
SAMPLING_EXTRAS = frozenset({"top_k", "min_p", "repetition_penalty", "top_a"})
FORWARDED = OPENAI_FIELDS | SAMPLING_EXTRAS


def forwarded_fields(extra: Iterable[str] = ()) -> frozenset[str]:
    """The fields sent to the model server: ``FORWARDED`` and the operator's ``extra`` (UPSTREAM_EXTRA_FIELDS)."""
    return FORWARDED | frozenset(name.strip() for name in extra if name.strip())


def kept(body: dict[str, Any], fields: frozenset[str]) -> dict[str, Any]:
    """``body`` with only the top-level ``fields`` (a message's or a tool's own fields are the model server's)."""
    return {k: v for k, v in body.items() if k in fields}


# The subnet's sampling block (``sampling_parameters``) in the model server's own fields.
SAMPLING_NAMES = (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"),
                  ("max_new_tokens", "max_tokens"))


def upstream_request(body: dict[str, Any], fields: frozenset[str] = FORWARDED) -> dict[str, Any]:
    """What of ``body`` a model server is sent (``kept``), with the subnet's sampling block in its own fields
    where the request did not set them: the same for a miner's model server and the validator's reference
    model (the same sampling on both sides of a comparison)."""
    out = kept(body, fields)
    sp = body.get("sampling_parameters")
    for name, field in SAMPLING_NAMES if isinstance(sp, dict) else ():
        if sp.get(name) is not None and field not in out:
            out[field] = sp[name]
    return out
