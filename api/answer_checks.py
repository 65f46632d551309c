"""What counts as an answer to a request, beyond being well formed: the tools it offers, the JSON it
asks for.

A race's first valid answer wins, and "valid" has to include what the caller asked for: otherwise a
fast miner wins every race with a made-up tool call, or with prose where the caller's code parses
JSON. A run that fails these checks is a failed miner (``bad_response``), and the next one answers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shared.jsonutil import loads

if TYPE_CHECKING:
    from api.race import MinerRun

Check = Callable[["MinerRun"], str | None]  # why a finished run is no answer (None: it is one)
UNFIT = "unfit"  # the error kind of a run a check refused: lost the race, but its text is still scored
NOT_JSON = "the answer is not the JSON the request asked for (response_format)"
NO_CALL = "the request's tool_choice requires a tool call, and the answer made none"


class Unfit(ValueError):
    """A chunk shows the answer cannot be what the request asked for (prose where JSON was asked)."""


def json_opening(body: dict[str, Any]) -> str | None:
    """What a JSON-mode answer starts with, so a stream of prose fails at its first words instead of
    winning the race: ``{`` for ``json_object`` and an object schema (OpenAI's structured outputs are
    objects), ``[`` for an array schema (model servers such as vLLM take one); None: not known, any
    text."""
    fmt = body.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "json_object":
        return "{"
    spec = fmt.get("json_schema") if kind == "json_schema" else None
    schema = spec.get("schema") if isinstance(spec, dict) else None
    root = schema.get("type") if isinstance(schema, dict) else None
    return {"object": "{", "array": "["}.get(root) if isinstance(root, str) else None


def caller_limited(body: dict[str, Any]) -> bool:
    """Whether the caller set its own token limit (``max_tokens``, ``max_completion_tokens``; a Responses request's
    ``max_output_tokens`` arrives as one): only then may an answer end cut (``finish_reason: "length"``) and be
    returned so. Trusted without one, a miner's claimed "length" let any fast half-answer win the race."""
    return any(type(body.get(name)) is int for name in ("max_tokens", "max_completion_tokens"))


def opens(text: str, opening: str | tuple[str, ...]) -> bool:
    """Whether ``text`` (a cut answer's) begins as JSON that opens with ``opening`` (or one of them), whitespace
    aside."""
    return text.lstrip().startswith(opening)


def offered_tools(body: dict[str, Any]) -> frozenset[str]:
    """The functions a model may call for ``body``: its tools, narrowed by ``tool_choice`` (none with
    ``"none"``, one when it names one). A miner's call of anything else is garbage, never an answer."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not isinstance(tools, list) or not tools or choice == "none":
        return frozenset()
    if isinstance(choice, dict) and isinstance(fn := choice.get("function"), dict) and isinstance(fn.get("name"), str):
        return frozenset({fn["name"]})
    return frozenset(t["function"]["name"] for t in tools
                     if isinstance(t, dict) and isinstance(t.get("function"), dict)
                     and isinstance(t["function"].get("name"), str))


def must_call(body: dict[str, Any]) -> bool:
    """Whether ``body``'s ``tool_choice`` obliges the model to call a tool (``"required"``, or one named
    function): a model server then constrains its output to calls, so text is no answer to it."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if not isinstance(tools, list) or not tools:
        return False
    return choice == "required" or (isinstance(choice, dict) and choice.get("type") == "function")


def _strict_schemas(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each ``strict`` function's parameters, by name: read only when a call of it comes (``_misfit``)."""
    out: dict[str, dict[str, Any]] = {}
    for tool in body.get("tools") or ():
        fn = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(fn, dict) and fn.get("strict") is True and isinstance(fn.get("parameters"), dict) \
                and isinstance(fn.get("name"), str):
            out[fn["name"]] = fn["parameters"]
    return out


def _misfit(schema: dict[str, Any], value: Any) -> str | None:
    """Why ``value`` does not fit a strict ``schema`` (``api.strict_schema.misfit``). Imported here, at the first
    strict schema's check: jsonschema and what it loads (~3 MB of every worker's memory, ~0.1 s of CPU) serve
    only callers who send one, and an API that never sees one never loads them."""
    from api.strict_schema import misfit

    return misfit(schema, value)


def tool_check(body: dict[str, Any]) -> Check | None:
    """For a request offering tools: each call's ``arguments`` must be a JSON object (the SDKs and agent
    frameworks ``json.loads`` them, and raise on anything else; ``""`` is taken as ``{}``), fitting the
    function's parameters when it is ``strict``; a ``tool_choice`` that requires a call needs one (a refusal
    aside); and ``parallel_tool_calls: false`` allows one. The last call of an answer that ends with
    ``finish_reason: "length"`` may be cut JSON when the caller set a token limit (``caller_limited``) and the
    cut arguments open an object: the caller's own limit cut it, and OpenAI returns it so (the caller checks
    ``finish_reason``); the name and the other calls are still checked. None:
    nothing to check (no tools, or ``"none"``, where any call already fails the miner, ``MinerRun.offered``)."""
    if not offered_tools(body):
        return None
    strict = _strict_schemas(body)
    single = body.get("parallel_tool_calls") is False
    required = must_call(body)
    may_cut = caller_limited(body)

    def check(run: MinerRun) -> str | None:
        calls = run.merged_tool_calls() or []
        if not calls:
            return NO_CALL if required and not run.refusal else None
        if single and len(calls) > 1:
            return f"{len(calls)} tool calls, and the request set parallel_tool_calls to false"
        for call in calls:
            name, raw = call["function"]["name"], call["function"]["arguments"]
            try:
                arguments = loads(raw) if raw.strip() else {}
            except ValueError:
                if may_cut and run.finish_reason == "length" and call is calls[-1] and opens(raw, "{"):
                    continue  # cut by the caller's own max_tokens: returned as cut, as OpenAI does
                return f"the arguments of the call to {name[:64]!r} are not JSON"
            if not isinstance(arguments, dict):
                return f"the arguments of the call to {name[:64]!r} are not a JSON object"
            if name in strict and (why := _misfit(strict[name], arguments)):
                return f"the arguments of the call to {name[:64]!r} do not fit its strict parameters: {why}"
        return None

    return check


def answer_check(body: dict[str, Any]) -> Check | None:
    """Every check ``body`` asks of a whole answer (``tool_check``, ``json_check``); None: none."""
    checks = [c for c in (tool_check(body), json_check(body)) if c is not None]
    if len(checks) < 2:
        return checks[0] if checks else None
    return lambda run: next((why for check in checks if (why := check(run))), None)


def json_check(body: dict[str, Any]) -> Check | None:
    """For ``response_format`` ``json_object`` or ``json_schema``: the answer must be JSON, and with a
    ``strict`` schema it must fit it (a non-strict schema is a model's guide, not a contract). An answer that
    ends with ``finish_reason: "length"`` may be cut JSON when the caller set a token limit (``caller_limited``)
    and its text opens the JSON (``json_opening``; prose claiming a cut is still no answer): the caller's own
    limit cut it, and OpenAI returns it so (the caller checks ``finish_reason``), as ``tool_check`` does a cut
    call; a stream's first text must open the JSON too. None: nothing to check. An answer that calls a tool is
    not text to check."""
    fmt = body.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind not in ("json_object", "json_schema"):
        return None
    spec = fmt.get("json_schema") if kind == "json_schema" else None
    schema = spec.get("schema") if isinstance(spec, dict) and spec.get("strict") is True else None
    if not isinstance(schema, dict):
        schema = None  # a non-strict schema guides the model and is not enforced
    # How a cut answer must begin (an object or array as the format says; any JSON text that a cut leaves unclosed
    # when not known); None: no answer may end cut, the caller set no limit.
    cut_opening = (json_opening(body) or ("{", "[", '"')) if caller_limited(body) else None

    def check(run: MinerRun) -> str | None:
        if run.tool_calls or run.refusal:  # a call, or the model declining, is no text to check
            return None
        try:
            value = loads(run.text)
        except ValueError:
            # cut by the caller's own max_tokens (JSON begun, not prose): returned as cut, as OpenAI does
            cut = cut_opening is not None and run.finish_reason == "length" and opens(run.text, cut_opening)
            return None if cut and run.text.strip() else NOT_JSON
        if schema is None or (why := _misfit(schema, value)) is None:
            return None
        return f"the answer does not fit the request's strict JSON schema: {why}"

    return check
