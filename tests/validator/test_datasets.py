"""Datasets: the offline generators, JSONL sources, and the corpus the miner's search shares."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from neurons.miner.backends.deterministic import DeterministicBackend
from neurons.miner.search import CorpusSearch
from neurons.validator.datasets import build_datasets, load_jsonl_datasets
from neurons.validator.reference import DeterministicReference
from shared import corpus as corpus_module
from shared.arithmetic import evaluate, find_expression
from shared.corpus import Corpus, builtin_corpus, generate_documents, load_corpus


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_builtin_corpus_is_identical_in_every_process() -> None:
    a, b = builtin_corpus(), Corpus(generate_documents())  # the shared one, and one built afresh as elsewhere
    assert [d.url for d in a.documents] == [d.url for d in b.documents]
    assert len({d.url for d in a.documents}) == len(a) == 150
    doc = a.documents[4]
    results = CorpusSearch(a).search(doc.title.split(" (")[0] + " " + doc.facts[0].answer)
    assert results[0]["url"] == doc.url and results[0]["relevant"] in results[0]["content"]


def test_the_builtin_corpus_is_built_once_however_many_backends_a_process_makes(monkeypatch) -> None:
    """A validator's reference, its QA dataset and a miner each asked for the built-in corpus, and every
    ``DeterministicBackend()`` generated and indexed its 150 documents again (~14 ms of CPU each)."""
    built: list[int] = []

    def counted(*args: object, **kwargs: object) -> list:
        built.append(1)
        return generate_documents(*args, **kwargs)
    monkeypatch.setattr(corpus_module, "generate_documents", counted)
    backends = [DeterministicBackend() for _ in range(20)] + [DeterministicReference().backend for _ in range(20)]
    assert len(built) <= 1 and len({id(b.search.corpus) for b in backends}) == 1
    assert load_corpus(None) is builtin_corpus() and len(built) <= 1


def test_jsonl_file_feeds_inference_and_qa(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"prompt": "Say hi"},
        {"messages": [{"role": "user", "content": "Count to 3"}]},
        {"context": "Paris is in France.", "question": "Where is Paris?", "answer": "France"},
        {"unrelated": True},
    ])
    sets = load_jsonl_datasets(path)
    assert len(sets["inference"].records) == 2 and len(sets["qa"].records) == 1
    merged = build_datasets(builtin_corpus(), str(path))
    assert merged["qa"].sample(random.Random(0))["answer"] == "France"
    assert merged["web"].name == "builtin-web"


def test_bad_jsonl_is_refused_with_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{oops\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        load_jsonl_datasets(bad)
    with pytest.raises(ValueError, match="no prompt"):
        load_jsonl_datasets(write_jsonl(tmp_path / "none.jsonl", [{"x": 1}]))


def test_messages_a_miner_would_refuse_are_refused_with_their_line(tmp_path: Path) -> None:
    """Sent as tasks, they would fail at every miner and score them all 0 for the dataset's mistake."""
    path = write_jsonl(tmp_path / "m.jsonl", [{"prompt": "ok"}, {"messages": [{"role": "user", "content": "ok"}]},
                                              {"messages": [{"role": "user"}]}])
    with pytest.raises(ValueError, match=r"m.jsonl:3: messages.0.content: a user message needs content"):
        load_jsonl_datasets(path)
    path = write_jsonl(tmp_path / "r.jsonl", [{"messages": [{"role": "robot", "content": "x"}]}])
    with pytest.raises(ValueError, match=r"r.jsonl:1: messages.0.role"):
        load_jsonl_datasets(path)


def test_corpus_from_jsonl(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [{"url": "https://a.example/1", "title": "One", "content": "first page"},
                                              {"url": "https://a.example/2", "content": "second page"}, {"x": 1}])
    corpus = load_corpus(path)
    assert len(corpus) == 2 and corpus.get("https://a.example/2").title == "https://a.example/2"
    assert build_datasets(corpus)["qa"].sample(random.Random(1))["question"]


@pytest.mark.parametrize("text,value", [("What is 12 * 7 + 3?", 87), ("2 - 5 - 1", -4), ("What is 3 + 4 * 2?", 11)])
def test_arithmetic_is_exact_and_safe(text: str, value: int) -> None:
    assert evaluate(find_expression(text)) == value


@pytest.mark.parametrize("expr", ["__import__('os')", "2 ** 999999", "1 / 0", "x + 1", "1" * 300])
def test_arithmetic_refuses_anything_else(expr: str) -> None:
    with pytest.raises(ValueError):
        evaluate(expr)


def test_plain_inference_prompts_come_in_thousands_of_wordings() -> None:
    """Six fixed sentences around a corpus title told a synthetic prompt apart at a glance; over 10,000 seeds
    the built-in plain prompts now take well over a thousand wordings (the title masked)."""
    from neurons.validator.datasets import PromptGenerator

    generator = PromptGenerator(builtin_corpus(), tool_share=0.0)
    titles = sorted(generator.titles, key=len, reverse=True)
    wordings = set()
    for seed in range(10_000):
        text = generator.sample(random.Random(seed))["messages"][0]["content"]
        wordings.add(next(text.replace(t, "T") for t in titles if t in text))
    assert len(wordings) >= 1_500, len(wordings)
