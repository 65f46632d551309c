"""Where synthetic tasks get their material: built-in offline generators or a JSONL file.

A ``Dataset`` hands out records (plain dicts) from a seeded ``random.Random``
so a cycle can be replayed in a test. The built-in generators need no files and
no network; ``JsonlDataset`` reads real corpora (``DATASET_FILE`` /
``sn1 localnet --dataset path.jsonl``):

- ``{"prompt": "..."}`` or ``{"messages": [...]}``: an inference prompt, with optional ``"tools"``
  (OpenAI function tools: an agent's request, scored by the call the model makes);
- ``{"context": "...", "question": "...", "answer": "..."}``: a QA item, with an optional
  ``"evidence"`` (the context's sentence that states the answer; without it, containing the
  answer is the whole reward).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Protocol

from pydantic import TypeAdapter, ValidationError

from neurons.validator.agents import agent_prompt
from shared.arithmetic import evaluate
from shared.corpus import Corpus, builtin_corpus, iter_jsonl_numbered
from shared.errors import first_problem
from shared.protocol import ChatMessage, Tool

# A plain prompt is a task, maybe an audience, and a form (12 x 8 x 8, with 3 openings: 2,304 wordings). Six
# fixed sentences told a synthetic prompt apart from a caller's at a glance.
_TASKS = ("write a short note about {title}", "summarise what is known about {title}", "explain why {title} matters",
          "list three questions a visitor might ask about {title}", "describe {title}",
          "compose a four-line poem about {title}", "give three facts about {title}", "tell me about {title}",
          "draft an encyclopedia introduction to {title}", "write a social media post about {title}",
          "compare {title} with something familiar", "outline a short lesson on {title}")
_AUDIENCES = ("", " for a child", " as a travel guide would", " for a newspaper", " for a student",
              " for an expert", " for a podcast intro", " for a museum sign")
_FORMS = (".", " in a few sentences.", " in one paragraph.", " in under 60 words.", ", as bullet points.",
          " in a friendly tone.", " in plain words.", ", briefly.")
_OPENINGS = ("", "Please ", "Hey, ")


def plain_prompt(rng: random.Random, title: str) -> str:
    """A plain inference prompt about ``title``, in one of 2,304 wordings."""
    text = rng.choice(_OPENINGS) + rng.choice(_TASKS).format(title=title) + rng.choice(_AUDIENCES) + rng.choice(_FORMS)
    return text[0].upper() + text[1:]


TOOL_SHARE = 0.2  # of built-in inference prompts: an agent's request with tools, as a share of callers' are


class Dataset(Protocol):
    name: str

    def sample(self, rng: random.Random) -> dict[str, Any]: ...


class PromptGenerator:
    """Inference prompts built from corpus titles in composed wordings; ``tool_share`` of them an agent's,
    offering tools (without, a request with ``tools`` was always a caller's: a miner could tell, and the
    calls it made were never checked by a synthetic task). The agents' tools and requests are generated
    (``agents/``): four fixed tools and four templates let a miner tell every synthetic agent's request by
    its tool set and answer it from a table."""

    name = "builtin-prompts"

    def __init__(self, corpus: Corpus, tool_share: float = TOOL_SHARE) -> None:
        self.titles = [d.title.split(" (")[0] for d in corpus.documents]
        self.tool_share = tool_share

    def sample(self, rng: random.Random) -> dict[str, Any]:
        title = rng.choice(self.titles)
        if rng.random() >= self.tool_share:
            return {"messages": [{"role": "user", "content": plain_prompt(rng, title)}]}
        return agent_prompt(rng, self.titles)


class CorpusQA:
    """Question answering over the corpus: a document, one of its facts, the evidence sentence."""

    name = "builtin-qa"

    def __init__(self, corpus: Corpus) -> None:
        self.documents = [d for d in corpus.documents if d.facts]
        if not self.documents:
            raise ValueError("the corpus has no documents with facts for question answering")

    def sample(self, rng: random.Random) -> dict[str, Any]:
        doc = rng.choice(self.documents)
        fact = rng.choice(doc.facts)
        return {"context": doc.content, "question": fact.question, "answer": fact.answer,
                "evidence": fact.evidence, "url": doc.url}


class WebQueries:
    """Search queries that one corpus document answers (its title plus a fact's answer)."""

    name = "builtin-web"

    def __init__(self, corpus: Corpus) -> None:
        self.documents = list(corpus.documents)

    def sample(self, rng: random.Random) -> dict[str, Any]:
        doc = rng.choice(self.documents)
        name = doc.title.split(" (")[0]
        if doc.facts:
            fact = rng.choice(doc.facts)
            query = f"{name} {fact.answer}"
        else:
            query = name
        return {"query": query, "target_url": doc.url}


class ArithmeticGenerator:
    """Integer expressions with an exactly verifiable answer: a lazy miner is caught with no model."""

    name = "builtin-arithmetic"

    def sample(self, rng: random.Random) -> dict[str, Any]:
        a, b, c = rng.randint(2, 999), rng.randint(2, 99), rng.randint(1, 999)
        op1, op2 = rng.choice("+-*"), rng.choice("+-")
        expression = f"{a} {op1} {b} {op2} {c}"
        return {"expression": expression, "answer": str(evaluate(expression))}


class JsonlDataset:
    """Records from a JSONL file of one kind (``prompt``/``messages`` or ``context``+``question``+``answer``)."""

    def __init__(self, records: list[dict[str, Any]], name: str) -> None:
        if not records:
            raise ValueError(f"{name}: no usable records")
        self.records = records
        self.name = name

    def sample(self, rng: random.Random) -> dict[str, Any]:
        return rng.choice(self.records)


_MESSAGES = TypeAdapter(list[ChatMessage])
_TOOL_LIST = TypeAdapter(list[Tool])


def _as_prompt(r: dict[str, Any]) -> dict[str, Any] | None:
    """A prompt record as the miners' request messages; ``ValueError`` for messages a miner would refuse
    (every miner would fail the task and score 0 for the dataset's mistake)."""
    if isinstance(r.get("messages"), list) and r["messages"]:
        _checked(_MESSAGES, r["messages"], "messages")
        prompt = {"messages": r["messages"]}
    elif isinstance(r.get("prompt"), str) and r["prompt"].strip():
        prompt = {"messages": [{"role": "user", "content": r["prompt"]}]}
    else:
        return None
    if r.get("tools") is not None:
        if not isinstance(r["tools"], list) or not r["tools"]:
            raise ValueError("tools: a non-empty list of function tools")
        prompt["tools"] = _checked(_TOOL_LIST, r["tools"], "tools")
    return prompt


def _checked(adapter: TypeAdapter[Any], value: Any, field: str) -> Any:
    """``value`` as the API would take it from a caller, or ``ValueError`` naming the field."""
    try:
        adapter.validate_python(value)
    except ValidationError as e:
        where, why = first_problem(e)
        raise ValueError(f"{field}.{where}: {why}") from None
    return value


def _as_qa(r: dict[str, Any]) -> dict[str, Any] | None:
    if all(isinstance(r.get(k), str) and r[k].strip() for k in ("context", "question", "answer")):
        return {"context": r["context"], "question": r["question"], "answer": r["answer"],
                "evidence": r["evidence"] if isinstance(r.get("evidence"), str) else ""}
    return None


def load_jsonl_datasets(path: str | Path) -> dict[str, JsonlDataset]:
    """Split a JSONL file into the datasets it can feed: ``{"inference": ..., "qa": ...}``."""
    prompts, qa = [], []
    for lineno, r in iter_jsonl_numbered(path):
        try:
            if (item := _as_qa(r)) is not None:
                qa.append(item)
            elif (item := _as_prompt(r)) is not None:
                prompts.append(item)
        except ValueError as e:
            raise ValueError(f"{path}:{lineno}: {e}") from None
    out: dict[str, JsonlDataset] = {}
    if prompts:
        out["inference"] = JsonlDataset(prompts, f"{Path(path).name}:prompts")
    if qa:
        out["qa"] = JsonlDataset(qa, f"{Path(path).name}:qa")
    if not out:
        raise ValueError(f"{path}: no prompt or question-answering records")
    return out


def build_datasets(corpus: Corpus, dataset_file: str | None = None) -> dict[str, Dataset]:
    """The datasets each task draws from; a JSONL file replaces the generators it covers."""
    datasets: dict[str, Dataset] = {
        "inference": PromptGenerator(corpus),
        # QA carries its context in the prompt, so a corpus without facts borrows the built-in one's.
        "qa": CorpusQA(corpus if any(d.facts for d in corpus.documents) else builtin_corpus()),
        "web": WebQueries(corpus),
        "arithmetic": ArithmeticGenerator(),
    }
    if dataset_file:
        datasets.update(load_jsonl_datasets(dataset_file))
    return datasets
