"""Each reward on hand-made answers: good, empty, wrong, slow, malformed, copied."""

from __future__ import annotations

import asyncio
import json
import random
import time

import pytest
from loguru import logger
from prometheus_client import generate_latest

from neurons.miner.backends.deterministic import DeterministicBackend, generate_text
from neurons.miner.search import CorpusSearch
from neurons.validator.datasets import JsonlDataset, load_jsonl_datasets
from neurons.validator.reference import DeterministicReference
from neurons.validator.rewards.exact import number_reward
from neurons.validator.rewards.penalties import copied_uids, latency_factor
from neurons.validator.rewards.text import (
    lcs_length,
    normalize,
    qa_reward,
    reference_reward,
    rouge_l,
    similarity,
    token_f1,
)
from neurons.validator.rewards.tools import Reply
from neurons.validator.rewards.web import web_reward
from neurons.validator.scores import ScoreBook
from neurons.validator.scoring import (
    Scorer,
    ScoringJob,
    ScoringQueue,
    job_failures,
    rebuild_answer,
    scoring_worker,
)
from neurons.validator.synthetic import challenge_body
from neurons.validator.tasks import default_registry
from neurons.validator.tasks.base import RewardContext
from shared.corpus import builtin_corpus
from shared.jsonutil import dumps
from shared.metagraph import MetagraphView
from shared.metrics import ValidatorMetrics
from shared.protocol import chunk_object
from tests.compat.support import sample
from tests.helpers import StaticSource, log_lines, loop_gaps, snapshot, wait_until

CORPUS = builtin_corpus()


def naive_lcs(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def test_bit_parallel_lcs_matches_the_textbook_table() -> None:
    rng = random.Random(7)
    for _ in range(300):
        a = [rng.choice("abcde") for _ in range(rng.randint(0, 70))]
        b = [rng.choice("abcdef") for _ in range(rng.randint(0, 70))]
        assert lcs_length(a, b) == naive_lcs(a, b)


def test_text_metrics_on_hand_made_answers() -> None:
    ref = "the river flows into the grey sea".split()
    assert rouge_l(ref, ref) == token_f1(ref, ref) == 1.0
    assert rouge_l([], ref) == token_f1(ref, []) == 0.0
    shuffled = list(reversed(ref))
    assert token_f1(shuffled, ref) == 1.0 and rouge_l(shuffled, ref) < 0.5  # order matters for ROUGE-L
    assert similarity("completely unrelated words here", "the river flows") == 0.0


def test_inference_reward_exact_when_reproducible() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "seed": 3}
    honest = generate_text(body)
    assert reference_reward(honest, honest, reproducible=True) == 1.0
    assert reference_reward("  " + honest.replace(" ", "  ") + "\n", honest, reproducible=True) == 1.0
    assert reference_reward("", honest, reproducible=True) == 0.0
    other_seed = generate_text({**body, "seed": 4})
    assert reference_reward(other_seed, honest, reproducible=True) < 0.5
    truncated = " ".join(honest.split()[:-2])
    assert 0.3 < reference_reward(truncated, honest, reproducible=False) < 1.0


def test_qa_reward() -> None:
    evidence = "The Kelzor river flows into the Grey Sea."
    assert qa_reward(evidence, "Grey Sea", evidence) == pytest.approx(1.0)
    assert qa_reward("Grey Sea.", "Grey Sea", evidence) > 0.6
    assert qa_reward("", "Grey Sea", evidence) == 0.0
    assert qa_reward("The Kelzor river is 909 km long.", "Grey Sea", evidence) < 0.3
    stuffed = " ".join([evidence] * 30)
    assert qa_reward(stuffed, "Grey Sea", evidence) < 0.3


QA_ROW = {  # a JSONL dataset row with no evidence sentence, as most QA datasets ship
    "context": ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is "
                "named after the engineer Gustave Eiffel, whose company designed and built the tower from 1887 "
                "to 1889. Locally nicknamed La dame de fer, it was constructed as the centerpiece of the 1889 "
                "World's Fair, and to crown the centennial anniversary of the French Revolution. Although "
                "initially criticised by some of France's leading artists and intellectuals for its design, it "
                "has since become a global cultural icon of France and one of the most recognisable structures "
                "in the world."),
    "question": "Whose company designed and built the Eiffel Tower?",
    "answer": "Gustave Eiffel",
}


async def test_a_qa_row_without_evidence_pays_an_honest_sentence_in_full(tmp_path) -> None:
    """Without evidence the short answer stood in for it: the one sentence the prompt asks for earned
    0.6 + 0.4 x its F1 with two words (0.72 here, where the bare answer got 1.0), and a sentence over
    26 tokens was quartered as padding (0.16). Containing the answer is now the whole reward."""
    registry = default_registry()
    scorer = Scorer(registry, RewardContext(DeterministicReference(), CORPUS),
                    ScoreBook(registry.probabilities, alpha=0.5, path=tmp_path / "scores.json"))
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps(QA_ROW) + "\n")
    task = registry.get("QuestionAnsweringTask")
    challenge = task.build(random.Random(0), load_jsonl_datasets(path))
    answers = {
        1: "Gustave Eiffel.",
        2: "The Eiffel Tower was designed and built by the company of Gustave Eiffel.",
        3: ("The tower was designed and built between 1887 and 1889 by the company of the engineer Gustave "
            "Eiffel, after whom it is named, as the centerpiece of the 1889 World's Fair in Paris."),
        4: "It was designed by the architect Stephen Sauvestre.",
        5: QA_ROW["context"],  # the context pasted back: it contains the answer, so padding must still cost
    }
    t = [0.05, 0.1, 0.2]
    job = ScoringJob(source="synthetic", task=task.name, bodies={u: challenge_body(challenge, 7) for u in answers},
                     hotkeys={u: f"hk{u}" for u in answers}, chunks={u: chunks_for(a) for u, a in answers.items()},
                     timings={u: t for u in answers}, deadline_s=10.0, expected=challenge.expected)
    rewards = await scorer.score(job)
    assert rewards[1] == rewards[2] == rewards[3] == 1.0, rewards
    assert rewards[4] == 0.0
    assert rewards[5] <= 0.25


def test_evidence_that_only_repeats_the_answer_is_no_evidence() -> None:
    sentence = "The Eiffel Tower was designed and built by the company of Gustave Eiffel."
    assert qa_reward(sentence, "Gustave Eiffel", "Gustave Eiffel") == qa_reward(sentence, "Gustave Eiffel", "") == 1.0
    evidence = "It is named after the engineer Gustave Eiffel, whose company designed and built the tower."
    assert 0.6 < qa_reward(sentence, "Gustave Eiffel", evidence) < 1.0, "rows with evidence are scored as before"


@pytest.mark.parametrize("answer,reward", [
    ("444", 1.0), ("The answer is 444.", 1.0), ("444.0", 1.0), ("445", 0.0), ("", 0.0), ("four hundred", 0.0),
    ("443 444 445 446", 0.0), ("x" * 500 + " 444", 0.0),
])
def test_number_reward(answer: str, reward: float) -> None:
    assert number_reward(answer, "444") == reward


def test_large_numbers_are_compared_exactly() -> None:
    right = str(123456789123456789 * 987654321)
    assert number_reward(right, right) == 1.0 and number_reward(right + ".0", right) == 1.0
    assert number_reward(str(int(right) + 12345), right) == 0.0, "equal as floats, wrong as numbers"
    assert number_reward("121932631234567900000000000", right) == 0.0


def test_web_reward() -> None:
    doc = CORPUS.documents[0]
    query = doc.title.split(" (")[0] + " " + doc.facts[3].answer
    good = [{"url": doc.url, "content": doc.content, "relevant": doc.facts[3].evidence}]
    assert web_reward(json.dumps(good), query, CORPUS, doc.url) == pytest.approx(1.0)
    assert web_reward("", query, CORPUS, doc.url) == 0.0
    assert web_reward("not json", query, CORPUS, doc.url) == 0.0
    assert web_reward(json.dumps({"url": doc.url}), query, CORPUS, doc.url) == 0.0
    fake_content = [{"url": doc.url, "content": "A page about something else entirely, made up.", "relevant": "made"}]
    assert web_reward(json.dumps(fake_content), query, CORPUS, doc.url) == 0.0
    unknown_url = [{**good[0], "url": "https://example.com/nowhere"}]
    assert web_reward(json.dumps(unknown_url), query, CORPUS, doc.url) == 0.0
    relevant_not_in_content = [{**good[0], "relevant": "invented passage"}]
    assert web_reward(json.dumps(relevant_not_in_content), query, CORPUS, doc.url) == 0.0
    duplicated = good + [{**good[0], "url": doc.url.upper().replace("HTTPS", "https", 1) + "/"}]
    assert web_reward(json.dumps(duplicated), query, CORPUS, doc.url) == pytest.approx(0.75)
    other = CORPUS.documents[5]
    wrong_page = [{"url": other.url, "content": other.content, "relevant": other.facts[0].evidence}]
    assert web_reward(json.dumps(wrong_page), query, CORPUS, doc.url) < 0.3


def test_a_page_cited_in_another_spelling_of_its_url_is_the_page() -> None:
    """``HTTPS://Host/page/`` is the corpus's ``https://host/page``: the page was read, not faked (it
    scored 0 as an unknown URL, and missed the target page's half)."""
    doc = CORPUS.documents[0]
    query = doc.title.split(" (")[0] + " " + doc.facts[3].answer
    spelled = doc.url.replace("https://corpus", "HTTPS://Corpus", 1) + "/"
    assert CORPUS.get(spelled) is doc
    good = [{"url": spelled, "content": doc.content, "relevant": doc.facts[3].evidence}]
    assert web_reward(json.dumps(good), query, CORPUS, doc.url) == pytest.approx(1.0)
    assert web_reward(json.dumps(good), query, CORPUS, verifiable_only=True) == pytest.approx(1.0)


def test_a_url_the_api_drops_earns_nothing() -> None:
    """The validator reads a result's URL as the API shows it to callers: one with a newline, a space or
    credentials in it is no page's address (the API drops it), so it is no valid result either. yarl reads
    ``https://host/pa\nge`` as ``https://host/page``: it earned the page's full reward."""
    doc = CORPUS.documents[0]
    query = doc.title.split(" (")[0] + " " + doc.facts[3].answer
    cut = len(doc.url) - 3
    for url in (doc.url[:cut] + "\n" + doc.url[cut:], doc.url[:cut] + "\t" + doc.url[cut:],
                doc.url.replace("https://", "https://user:pw@", 1)):
        spelled = [{"url": url, "content": doc.content, "relevant": doc.facts[3].evidence}]
        assert web_reward(json.dumps(spelled), query, CORPUS, doc.url) == 0.0, url


def test_web_relevance_is_a_precision_mean() -> None:
    """Kept as designed: the honest search's lower-ranked pages share 2 of the query's 3 terms, so its list
    scores below 1, and a real, valid page off the query lowers the reward as padding (a mean that paid an
    honest list 1.0 whatever its pages' relevance would let any corpus page pad a list for free)."""
    doc = CORPUS.documents[0]
    query = doc.title.split(" (")[0] + " " + doc.facts[3].answer
    honest = CorpusSearch(CORPUS).search(query, 3)
    assert len(honest) == 3 and honest[0]["url"] == doc.url
    reward = web_reward(json.dumps(honest), query, CORPUS, doc.url)
    assert reward == pytest.approx(0.5 * (1 + 2 / 3 + 2 / 3) / 3 + 0.5)
    off = CORPUS.documents[1]
    padded = [*honest, {"url": off.url, "content": off.content, "relevant": off.facts[0].evidence}]
    assert web_reward(json.dumps(padded), query, CORPUS, doc.url) < reward


def test_organic_web_answers_are_judged_on_the_pages_the_validator_holds() -> None:
    """A caller's query finds pages the validator's corpus lacks: they are left out, not zeros (every
    honest miner scored 0 on organic web traffic); with none it can check, the answer is not scored."""
    doc = CORPUS.documents[0]
    query = doc.title.split(" (")[0] + " " + doc.facts[3].answer
    good = {"url": doc.url, "content": doc.content, "relevant": doc.facts[3].evidence}
    outside = {"url": "https://en.wikipedia.org/wiki/Danube", "content": "The Danube is a river in Europe.",
               "relevant": "a river"}
    assert web_reward(json.dumps([outside]), query, CORPUS, verifiable_only=True) is None
    assert web_reward(json.dumps([outside]), query, CORPUS) == 0.0, "synthetic answers are judged as before"
    assert web_reward(json.dumps([good, outside]), query, CORPUS, verifiable_only=True) == pytest.approx(
        web_reward(json.dumps([good]), query, CORPUS, verifiable_only=True))
    faked = {**good, "content": "Made up text that is on no page of the corpus at all."}
    assert web_reward(json.dumps([faked, outside]), query, CORPUS, verifiable_only=True) == 0.0
    assert web_reward("not json", query, CORPUS, verifiable_only=True) == 0.0
    assert web_reward(json.dumps([outside, outside]), query, CORPUS, verifiable_only=True) == 0.0, "padding is 0"
    assert web_reward(json.dumps([outside, good, good]), query, CORPUS, verifiable_only=True) == pytest.approx(
        0.5 * web_reward(json.dumps([good]), query, CORPUS, verifiable_only=True)), "a repeat still counts 0"


def test_latency_factor() -> None:
    assert latency_factor(0.1, 10.0) == 1.0
    assert latency_factor(2.5, 10.0) == 1.0
    assert latency_factor(8.0, 10.0) == pytest.approx(1 - 5.5 / 7.5)
    assert latency_factor(10.0, 10.0) == 0.0
    assert latency_factor(None, 10.0) == 0.0


# Four honest notes on one prompt, as a model samples them with four seeds at temperature 0.7.
EIFFEL_PROMPT = "Write a short note about the Eiffel Tower."
EIFFEL = [
    "The Eiffel Tower, completed in 1889 for the World's Fair, rises 330 metres above the Champ de Mars. Gustave "
    "Eiffel's company built it from wrought iron, and many artists first called it an eyesore. Today it welcomes "
    "about seven million visitors a year and has become the symbol of Paris.",
    "Standing on the Champ de Mars in Paris, the Eiffel Tower was designed by engineers working for Gustave Eiffel "
    "and opened in 1889. Once the tallest structure in the world, the iron lattice tower now draws millions of "
    "tourists who ride its lifts to the top for sweeping views over the city.",
    "Note: the Eiffel Tower is Paris's best-known landmark. Built between 1887 and 1889 as the entrance arch to the "
    "Exposition Universelle, the 330-metre wrought-iron tower was meant to stand for only twenty years, but it "
    "proved useful as a radio antenna and was kept.",
    "The Eiffel Tower is one of the most famous monuments on Earth. Erected for the 1889 World's Fair to mark a "
    "century since the French Revolution, it is made of some 18,000 iron parts held together by 2.5 million "
    "rivets, and it is repainted every seven years.",
]
# A copier's disguise: two words changed and two appended.
DISGUISED = EIFFEL[0].replace("rises", "stands").replace("eyesore", "monstrosity") + " Truly remarkable."


def test_copied_answers_only_count_when_seeds_differ() -> None:
    same = EIFFEL[0]
    assert copied_uids({1: same, 2: same, 3: EIFFEL[1]}, {1: 10, 2: 11, 3: 12}) == {1, 2}
    assert copied_uids({1: same, 2: same}, {1: 10, 2: 10}) == set()
    assert copied_uids({1: same, 2: DISGUISED, 3: EIFFEL[1]}, {1: 10, 2: 11, 3: 12}) == {1, 2}
    assert copied_uids({1: same, 2: DISGUISED}, {1: 10, 2: 10}) == set()
    assert copied_uids(dict(enumerate(EIFFEL)), dict(enumerate(range(4)))) == set()
    assert copied_uids({1: "ok", 2: "ok"}, {1: 1, 2: 2}) == set()


def test_honest_answers_that_coincide_in_part_are_not_copies() -> None:
    """Short answers, a memorised opening shared by two samples, and words quoted from the prompt are what
    honest answers to different seeds have in common: none of them makes a copy."""
    factual = "The capital of France is Paris, which is also its largest city."
    assert copied_uids({1: factual, 2: factual}, {1: 1, 2: 2}) == set(), "a short answer often is every seed's"
    memorised = ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named "
                 "after the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889.")
    a = memorised + " Today it is the most visited paid monument in the world, with millions of guests each year."
    b = memorised + " Locally nicknamed the iron lady, it was first criticised by artists but became a global icon."
    assert copied_uids({1: a, 2: b}, {1: 1, 2: 2}) == set(), "70 % in common, then two samples diverge"
    paragraph = ("Teh Eiffel Tower was built for the 1889 World's Fair in Paris. It was designed by the company of "
                 "Gustave Eiffel, and for fourty years it was the tallest structure in the world, until the Chrysler "
                 "Building in New York was finished in 1930. Today millions of visitors climb it every yaer.")
    prompt = f"Correct the spelling in this paragraph and reply with the paragraph only:\n{paragraph}"
    fixed = paragraph.replace("Teh", "The").replace("fourty", "forty").replace("yaer", "year")
    assert copied_uids({1: fixed, 2: fixed}, {1: 1, 2: 2}) == {1, 2}, "without the prompt, it looks copied"
    assert copied_uids({1: fixed, 2: fixed}, {1: 1, 2: 2}, prompt=prompt) == set(), "the words are the prompt's"
    copied = EIFFEL[0] + " " + paragraph  # quoting the prompt does not hide a copy of a peer's own words
    assert copied_uids({1: copied, 2: copied, 3: fixed}, {1: 1, 2: 2, 3: 3}, prompt=prompt) == {1, 2}


def test_a_copy_with_a_word_in_ten_changed_is_a_copy_and_one_in_five_is_not() -> None:
    words = normalize(EIFFEL[1])
    every = lambda k: " ".join(w if i % k else "zzz" for i, w in enumerate(words, 1))  # noqa: E731
    assert copied_uids({1: EIFFEL[1], 2: every(10)}, {1: 1, 2: 2}) == {1, 2}
    assert copied_uids({1: EIFFEL[1], 2: every(5)}, {1: 1, 2: 2}) == set()


class SampledReference:
    """A real LLM's reference as the validator sees it: not reproducible, one sample per seed."""

    reproducible = False

    def __init__(self, by_seed: dict[int, str]) -> None:
        self.by_seed = by_seed

    async def answer(self, body: dict) -> str:
        return self.by_seed[body["seed"]]

    async def close(self) -> None:
        return None


async def inference_rewards(tmp_path, prompt: str, answers: dict[int, str], references: dict[int, str]) -> dict:
    """Each uid asked ``prompt`` with seed 100 + uid, scored against ``references`` (uid -> the sample for
    its seed), as a synthetic job with a non-reproducible reference model."""
    registry = default_registry()
    reference = SampledReference({100 + u: text for u, text in references.items()})
    scorer = Scorer(registry, RewardContext(reference, CORPUS),
                    ScoreBook(registry.probabilities, alpha=0.5, path=tmp_path / "scores.json"))
    task = registry.get("InferenceTask")
    challenge = task.build(random.Random(0), {"inference": JsonlDataset([{"messages": [
        {"role": "user", "content": prompt}]}], "prompts")})
    t = [0.05, 0.1, 0.2]
    job = ScoringJob(source="synthetic", task=task.name,
                     bodies={u: challenge_body(challenge, 100 + u) for u in answers},
                     hotkeys={u: f"hk{u}" for u in answers}, chunks={u: chunks_for(a) for u, a in answers.items()},
                     timings={u: t for u in answers}, deadline_s=10.0, expected=challenge.expected)
    return await scorer.score(job)


async def test_a_copy_with_a_word_or_two_changed_scores_zero(tmp_path) -> None:
    """With a model that is not reproducible the reward is similarity, and a copy of a peer's answer earns
    about what an honest one does; only an identical copy was zeroed, so two words changed escaped."""
    references = dict(enumerate(EIFFEL, 1))  # uid 4's seed samples the fourth note; it sends uid 1's, disguised
    rewards = await inference_rewards(tmp_path, EIFFEL_PROMPT, {1: EIFFEL[0], 2: EIFFEL[1], 3: EIFFEL[2],
                                                                4: DISGUISED}, references)
    assert rewards[4] == 0.0 and rewards[1] == 0.0, "the copier, and the answer it copied, as for identical copies"
    assert rewards[2] == rewards[3] == 1.0, "honest samples of one prompt are not copies of each other"


async def test_honest_answers_every_seed_gives_alike_keep_their_reward(tmp_path) -> None:
    """A short factual answer, and a paragraph quoted back from the prompt, are the same text for every
    seed: the exact-match check zeroed every honest miner that gave them."""
    factual = "The capital of France is Paris."
    rewards = await inference_rewards(tmp_path, "What is the capital of France? Answer in one sentence.",
                                      {1: factual, 2: factual, 3: factual}, {1: factual, 2: factual, 3: factual})
    assert rewards == {1: 1.0, 2: 1.0, 3: 1.0}
    paragraph = ("The Eiffel Tower was built for the 1889 World's Fair in Paris. It was designed by the company of "
                 "Gustave Eiffel, and for forty years it was the tallest structure in the world, until the Chrysler "
                 "Building in New York was finished in 1930. Today millions of visitors climb it every year.")
    prompt = f"Repeat this paragraph word for word:\n{paragraph}"
    rewards = await inference_rewards(tmp_path, prompt, {1: paragraph, 2: paragraph}, {1: paragraph, 2: paragraph})
    assert rewards == {1: 1.0, 2: 1.0}


def chunks_for(text: str) -> list[str]:
    return [dumps(chunk_object(completion_id="c", model="m", delta={"role": "assistant", "content": ""})),
            dumps(chunk_object(completion_id="c", model="m", delta={"content": text})),
            dumps(chunk_object(completion_id="c", model="m", delta={}, finish_reason="stop"))]


def test_rebuild_answer_flags_garbage() -> None:
    assert rebuild_answer(chunks_for("hello"), [0.1, 0.2, 0.3], None).first_content_s == 0.2
    assert rebuild_answer(["{not json"], [0.1], None).error
    assert rebuild_answer(['{"choices": 5}'], [0.1], None).error
    assert rebuild_answer(chunks_for(""), [0.1, 0.2, 0.3], None).error == "empty answer"
    assert rebuild_answer([], [], "deadline exceeded").error == "deadline exceeded"


async def test_scorer_applies_penalties_around_the_task_reward(tmp_path) -> None:
    registry = default_registry()
    scores = ScoreBook(registry.probabilities, alpha=0.5, path=tmp_path / "scores.json")
    scorer = Scorer(registry, RewardContext(DeterministicReference(), CORPUS), scores)
    backend = DeterministicBackend()
    base = {"messages": [{"role": "user", "content": "Tell me a story"}], "task": "InferenceTask"}
    bodies = {uid: {**base, "seed": 100 + uid} for uid in range(1, 7)}
    good = {uid: backend.answer_text(b) for uid, b in bodies.items()}
    t = [0.05, 0.1, 0.2]
    job = ScoringJob(
        source="synthetic", task="InferenceTask", bodies=bodies, hotkeys={u: f"hk{u}" for u in bodies},
        chunks={1: chunks_for(good[1]),                       # good
                2: chunks_for(good[2]),                       # good but slow
                3: chunks_for(""),                            # empty
                4: ["garbage"],                               # malformed
                5: chunks_for(good[1]),                       # copied uid 1's answer
                6: chunks_for("random words that are not the answer at all")},  # wrong
        timings={1: t, 2: [5.0, 8.0, 8.1], 3: t, 4: [0.1], 5: t, 6: t},
        deadline_s=10.0,
    )
    rewards = await scorer.score(job)
    assert rewards[1] == 0.0 and rewards[5] == 0.0, "identical answers to different seeds are copies"
    assert rewards[3] == rewards[4] == 0.0
    assert 0.0 < rewards[2] < 0.5 and rewards[6] < 0.3
    job.chunks[5] = chunks_for(good[5])
    rewards = await scorer.score(job)
    assert rewards[1] == rewards[5] == 1.0
    assert (tmp_path / "scores.json").exists()


async def test_a_job_finishing_after_its_uid_changed_hands_credits_nobody(tmp_path) -> None:
    """A uid re-registered while its job waited on the reference model: the old owner's reward must not
    replace the new owner's fresh entry (it was reset, then the old owner came back)."""
    registry = default_registry()
    scores = ScoreBook(registry.probabilities, alpha=0.5, path=tmp_path / "scores.json")
    owners = {1: "hk-old", 2: "hk2"}
    scorer = Scorer(registry, RewardContext(DeterministicReference(), CORPUS), scores, owner=owners.get)
    body = {"messages": [{"role": "user", "content": "Tell me a story"}], "task": "InferenceTask", "seed": 4}
    good = chunks_for(DeterministicBackend().answer_text(body))
    job = ScoringJob(source="organic", task="InferenceTask", bodies={1: body, 2: {**body, "seed": 5}},
                     hotkeys={1: "hk-old", 2: "hk2"}, chunks={1: good, 2: chunks_for(DeterministicBackend()
                                                                                    .answer_text({**body, "seed": 5}))},
                     timings={1: [0.05, 0.1, 0.2], 2: [0.05, 0.1, 0.2]}, deadline_s=10.0)
    owners[1] = "hk-new"  # the metagraph sync moved uid 1 on while the job was scored
    scores.update(1, "hk-new", "ArithmeticTask", 0.5)
    await scorer.score(job)
    assert scores.miners[1].hotkey == "hk-new" and scores.miners[1].tasks == {"ArithmeticTask": 0.25}
    assert not scores.miners[1].organic
    assert scores.miners[2].organic["InferenceTask"] > 0, "uids still owned are credited as always"


async def test_an_organic_answer_the_callers_stop_left_empty_is_not_scored(tmp_path) -> None:
    """A stop sequence that matches the first word leaves "" (a valid answer, ended with finish_reason):
    scored, it was a zero any key could hand any miner by choosing the stop."""
    registry = default_registry()
    scorer = Scorer(registry, RewardContext(DeterministicReference(), CORPUS),
                    ScoreBook(registry.probabilities, alpha=0.5, path=tmp_path / "scores.json"))
    body = {"messages": [{"role": "user", "content": "Tell me a story"}], "task": "InferenceTask", "seed": 3}
    ended = [dumps(chunk_object(completion_id="c", model="m", delta={"role": "assistant"})),
             dumps(chunk_object(completion_id="c", model="m", delta={}, finish_reason="stop"))]
    first_word = DeterministicBackend().answer_text(body).split()[0]  # the reference's answer starts with it
    job = ScoringJob(source="organic", task="InferenceTask",
                     bodies={1: {**body, "stop": [first_word]}, 2: body, 3: {**body, "stop": [first_word]},
                             4: {**body, "max_tokens": 4096}, 5: {**body, "stop": ["zzz-never"]}},
                     hotkeys={u: f"hk{u}" for u in range(1, 6)}, chunks={1: ended, 2: ended, 3: ended[:1], 4: ended,
                                                                         5: ended},
                     timings={u: [0.1, 0.2] for u in range(1, 6)}, deadline_s=10.0)
    rewards = await scorer.score(job)
    assert 1 not in rewards, "the caller's stop emptied it: the reference says nothing either"
    assert rewards[2] == 0.0, "no stop asked for: an empty answer is still a zero"
    assert rewards[3] == 0.0, "no finish_reason: cut, not ended"
    # A limit that leaves the reference its answer: a miner answering every caller "" (a sandbagger, honest
    # only to the validator) was left out of organic scoring whenever the body had any max_tokens or stop.
    assert rewards[4] == 0.0 and rewards[5] == 0.0


async def test_megabytes_of_answers_do_not_stall_the_event_loop(tmp_path) -> None:
    """Rebuilding and comparing 4 answers of 3 MB each ran on the event loop: the validator's HTTP API
    and every race's chunk timings stood still for the whole job (seconds, with 8 answers of 7 MB)."""
    registry = default_registry()
    scorer = Scorer(registry, RewardContext(DeterministicReference(), CORPUS),
                    ScoreBook(registry.probabilities, alpha=0.5, path=tmp_path / "scores.json"))
    def big(uid: int) -> list[str]:  # ~3 MB of words, each miner its own
        piece = " ".join(f"w{(i * (uid + 3)) % 997}" for i in range(200))
        out = [dumps(chunk_object(completion_id="c", model="m", delta={"content": piece})) for _ in range(3000)]
        return [*out, dumps(chunk_object(completion_id="c", model="m", delta={}, finish_reason="stop"))]

    body = {"messages": [{"role": "user", "content": "Tell me a story"}], "task": "InferenceTask"}
    chunks = {u: big(u) for u in range(4)}
    job = ScoringJob(source="synthetic", task="InferenceTask", bodies={u: {**body, "seed": u} for u in range(4)},
                     hotkeys={u: f"hk{u}" for u in range(4)}, chunks=chunks,
                     timings={u: [0.1] * len(c) for u, c in chunks.items()}, deadline_s=10.0)
    async with loop_gaps() as gaps:
        rewards = await scorer.rewards(job)
    assert set(rewards) == {0, 1, 2, 3} and all(r < 0.5 for r in rewards.values())
    assert max(gaps) < 0.25, f"the event loop stood still for {max(gaps):.2f} s"


def test_web_answers_are_read_as_the_api_reads_them_and_an_empty_organic_one_is_not_scored() -> None:
    """``{"results": [...]}`` and a ```json fence are shown to callers (the API reads them) but scored 0;
    an honest "nothing found" ([]) for a caller's query scored 0 while invented URLs were not scored."""
    doc = CORPUS.documents[0]
    query = doc.title.split(" (")[0] + " " + doc.facts[3].answer
    good = [{"url": doc.url, "content": doc.content, "relevant": doc.facts[3].evidence}]
    plain = web_reward(json.dumps(good), query, CORPUS, doc.url)
    assert plain == pytest.approx(1.0)
    assert web_reward(json.dumps({"results": good}), query, CORPUS, doc.url) == plain
    assert web_reward("```json\n" + json.dumps(good) + "\n```", query, CORPUS, doc.url) == plain
    assert web_reward("[]", query, CORPUS, verifiable_only=True) is None
    assert web_reward("[]", query, CORPUS, doc.url) == 0.0, "a synthetic query's page is in the corpus: find it"


def test_chinese_and_japanese_answers_are_compared_character_by_character() -> None:
    """Split on whitespace only, a Chinese sentence was one token: two answers one character apart had
    similarity 0 (its English equivalent 0.92), and identical ones escaped the copy check (< 3 tokens)."""
    a, b = normalize("东京是日本的首都。"), normalize("东京是日本的首府。")
    assert rouge_l(a, b) > 0.8 and token_f1(a, b) > 0.8
    long = ("埃菲尔铁塔位于法国巴黎的战神广场，是一座镂空结构的铁塔，高三百三十米。它建成于一八八九年，"
            "是为了当年的世界博览会而建造的，如今每年吸引数百万游客前来参观。")
    assert copied_uids({1: long, 2: long}, {1: 1, 2: 2}) == {1, 2}
    short = "东京是日本的首都，也是日本最大的城市。"  # a short factual answer, a character a token: honest
    assert copied_uids({1: short, 2: short}, {1: 1, 2: 2}) == set()
    assert normalize("The river, 川は長い!") == ["river", "川", "は", "長", "い"]


def test_finding_the_expression_is_linear_on_hostile_prompts() -> None:
    """20,000 digits took 15 s (the regex backtracked through every shorter run at every position): one
    organic arithmetic prompt froze a miner's event loop, and the validator's scoring of it."""
    from shared.arithmetic import find_expression

    started = time.perf_counter()
    for hostile in ("1" * 20_000, "1 " * 20_000, "9" * 10_000 + "+", "-" + "7" * 20_000):
        assert find_expression(hostile) is None
    assert time.perf_counter() - started < 1.0, "linear, not quadratic"
    assert find_expression("What is 512 * 37 - 90?") == "512 * 37 - 90"
    assert find_expression("Compute -5 + 3, then 3 * -4") == "3 * -4"


async def test_an_organic_prompt_that_is_not_plain_integer_arithmetic_is_not_scored() -> None:
    """"(2 + 3) * 4" was read as 3 * 4, "2.5 * 4" as 5 * 4: a correct answer scored 0, and a miner that
    answered the misreading got full marks."""
    from neurons.validator.tasks.arithmetic import ArithmeticTask

    task, ctx = ArithmeticTask(), RewardContext(DeterministicReference(), CORPUS)

    def body(prompt: str) -> dict:
        return {"messages": [{"role": "user", "content": prompt}], "task": "ArithmeticTask"}

    for prompt, right in (("(2 + 3) * 4", "20"), ("2.5 * 4", "10"), ("1,000 + 1", "1001"), ("10 / 2 + 3", "8"),
                          ("3 * 4 for the 2024-2025 season", "12")):
        assert await task.reward(body(prompt), right, None, ctx) is None, prompt
    assert await task.reward(body("What is 12 * 7 + 3?"), "87", None, ctx) == 1.0
    assert await task.reward(body("What is 12 * 7 + 3?"), "88", None, ctx) == 0.0


def test_an_answer_is_timed_from_its_first_text_not_a_refusal_sent_ahead_of_it() -> None:
    """``{"refusal": " "}`` at once, the answer at the deadline: timed from the refusal (it claims a stream),
    the answer had full latency credit while a miner as slow without the trick had almost none."""
    refusal = dumps(chunk_object(completion_id="c", model="m", delta={"refusal": " "}))
    text = dumps(chunk_object(completion_id="c", model="m", delta={"content": "The answer."}))
    space = dumps(chunk_object(completion_id="c", model="m", delta={"content": " "}))
    end = dumps(chunk_object(completion_id="c", model="m", delta={}, finish_reason="stop"))
    tricked = rebuild_answer([refusal, space, text, end], [0.01, 0.02, 9.5, 9.6], None)
    plain = rebuild_answer([space, text, end], [0.02, 9.5, 9.6], None)
    assert tricked.first_content_s == plain.first_content_s == 9.5
    # a visible character or a zero-width one first was the same trick (the re-audit: "." scored 1.0 where the
    # honest answer at the same time scored 0.067)
    for lead in (".", "\u200b", "\u2060", "- "):
        led = dumps(chunk_object(completion_id="c", model="m", delta={"content": lead}))
        assert rebuild_answer([led, text, end], [0.01, 9.5, 9.6], None).first_content_s == 9.5, repr(lead)
    marks = dumps(chunk_object(completion_id="c", model="m", delta={"content": "..."}))
    assert rebuild_answer([space, marks, end], [0.01, 2.0, 2.1], None).first_content_s == 2.0, "no word: first mark"
    word = dumps(chunk_object(completion_id="c", model="m", delta={"content": "**Paris**"}))
    assert rebuild_answer([word, end], [1.5, 1.6], None).first_content_s == 1.5


async def test_an_empty_organic_answer_against_a_reference_that_does_not_reproduce(tmp_path) -> None:
    """A real LLM reference: one that answers nothing raised, and the whole job was skipped (every other
    miner's reward lost); under a ``stop`` it cannot tell an honest miner's "" (its own sample need not stop
    at once), so the miner's word is taken there; with only ``max_tokens``, a reference that says something
    makes the "" a 0."""
    from neurons.validator.reference import EmptyReference
    from neurons.validator.rewards.tools import Reply

    class Llm:
        reproducible = False

        def __init__(self, says: str) -> None:
            self.says = says

        async def answer(self, body):  # type: ignore[no-untyped-def]
            if not self.says:
                raise EmptyReference("reference LLM returned no text")
            return self.says

        async def reply(self, body):  # type: ignore[no-untyped-def]
            return Reply(text=self.says)  # as OpenAIReference.reply: "" is no error there

    registry = default_registry()
    body = {"messages": [{"role": "user", "content": "Tell me a story"}], "task": "InferenceTask", "seed": 3}
    ended = [dumps(chunk_object(completion_id="c", model="m", delta={"role": "assistant"})),
             dumps(chunk_object(completion_id="c", model="m", delta={}, finish_reason="stop"))]
    bodies = {1: {**body, "max_tokens": 64}, 2: {**body, "stop": ["Once"]}}
    for says, expected in (("", {}), ("Once upon a time", {1: 0.0})):
        scorer = Scorer(registry, RewardContext(Llm(says), CORPUS),
                        ScoreBook(registry.probabilities, alpha=0.5, path=tmp_path / f"s{len(says)}.json"))
        job = ScoringJob(source="organic", task="InferenceTask", bodies=bodies, hotkeys={1: "hk1", 2: "hk2"},
                         chunks={1: ended, 2: ended}, timings={1: [0.1, 0.2], 2: [0.1, 0.2]}, deadline_s=10.0)
        assert await scorer.rewards(job) == expected, says


class CountingReference(DeterministicReference):
    """The deterministic reference, counting the seeds it is asked for (a hosted model's calls cost money)."""

    def __init__(self) -> None:
        super().__init__()
        self.seeds: list[int] = []

    async def reply(self, body: dict) -> Reply:
        self.seeds.append(body.get("seed"))
        return await super().reply(body)


async def test_a_queued_job_for_a_uid_that_changed_hands_neither_asks_the_reference_nor_names_it(tmp_path) -> None:
    """A synthetic job queued for uids 1 and 2, scored after uid 2 was re-registered by another hotkey: uid 2
    was rightly not credited, yet its answer was judged (a reference call per seed, money with a hosted
    model) and the "scored" line named it (``1=1.00 2=1.00``), as if the new owner had been paid the old
    one's answer. Now only uid 1 is judged and named, and the line says uid 2 changed hands."""
    registry = default_registry()
    scores = ScoreBook(registry.probabilities, alpha=0.5, path=tmp_path / "scores.json")
    reference = CountingReference()
    view = MetagraphView(StaticSource(snapshot("val", {1: ("hk1", "127.0.0.1:1"), 2: ("hk-new", "127.0.0.1:2")})))
    await view.refresh()
    scorer = Scorer(registry, RewardContext(reference, CORPUS), scores, owner=view.hotkey_of)
    bodies = {u: {"messages": [{"role": "user", "content": "Tell me a story"}], "task": "InferenceTask",
                  "seed": 10 + u} for u in (1, 2)}
    job = ScoringJob(source="synthetic", task="InferenceTask", bodies=bodies, hotkeys={1: "hk1", 2: "hk-old"},
                     chunks={u: chunks_for(DeterministicBackend().answer_text(b)) for u, b in bodies.items()},
                     timings={u: [0.05, 0.1, 0.2] for u in bodies}, deadline_s=10.0)
    queue = ScoringQueue(4)
    await queue.put(job)
    lines, sink = log_lines("INFO")
    worker = asyncio.create_task(scoring_worker(queue, scorer, view))
    try:
        await wait_until(lambda: scorer.jobs_scored == 1, 5)
    finally:
        worker.cancel()
        logger.remove(sink)
    assert reference.seeds == [11], "uid 2's answer was judged for nobody"
    scored = [line for line in lines if "scored synthetic" in line]
    assert scored and " 1=1.00" in scored[0] and "2=" not in scored[0], scored
    assert "uid(s) 2 changed hands" in scored[0], scored
    assert set(scores.miners) == {1}


class BrokenReference(DeterministicReference):
    """A reference model client with a bug: each call raises what nothing expects (not a ``ReferenceError``)."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = True

    async def reply(self, body: dict) -> Reply:
        if self.broken:
            raise KeyError("choices")
        return await super().reply(body)


def organic_job(i: int) -> ScoringJob:
    body = {"messages": [{"role": "user", "content": f"Tell me a story {i}"}], "task": "InferenceTask", "seed": 7}
    return ScoringJob(source="organic", task="InferenceTask", bodies={1: body}, hotkeys={1: "hk1"},
                      chunks={1: chunks_for(DeterministicBackend().answer_text(body))}, timings={1: [0.05, 0.1]},
                      deadline_s=10.0, request_id=f"rid-{i}")


async def test_scoring_jobs_that_fail_alike_are_one_traceback_and_a_count_not_a_traceback_each(tmp_path) -> None:
    """A job whose scoring raises (a bug the payloads of one shape trigger) was dropped with a traceback of its
    own: 40 such payloads were 40 ERROR lines of 30 lines each, and under traffic hundreds a second that buried
    the rest of the log. Now the two workers' failures are one run: an ERROR with the first one's traceback and
    what it was, a line a minute counting those since, and an INFO line once jobs score again."""
    registry = default_registry()
    scores = ScoreBook(registry.probabilities, alpha=0.5, path=tmp_path / "scores.json")
    reference = BrokenReference()
    view = MetagraphView(StaticSource(snapshot("val", {1: ("hk1", "127.0.0.1:1")})))
    await view.refresh()
    scorer = Scorer(registry, RewardContext(reference, CORPUS), scores, owner=view.hotkey_of)
    queue = ScoringQueue(100)
    for i in range(40):
        queue.put_nowait(organic_job(i))
    now = [0.0]
    failures = job_failures(clock=lambda: now[0])
    lines, sink = log_lines("INFO")
    records: list = []
    traced = logger.add(lambda m: records.append(m.record), level="ERROR")
    metrics = ValidatorMetrics()
    workers = [asyncio.create_task(scoring_worker(queue, scorer, view, failures, observe=metrics.observe_loop))
               for _ in range(2)]
    try:
        await wait_until(lambda: failures.failures == 40, 10)
        now[0] = 61.0
        queue.put_nowait(organic_job(40))  # one more failure a minute on: the line that counts them
        await wait_until(lambda: failures.failures == 41, 5)
        reference.broken = False  # fixed (a restart with the fix, or the model server's answers back)
        now[0] = 200.0
        queue.put_nowait(organic_job(41))
        await wait_until(lambda: scorer.jobs_scored == 1 and not failures.failing, 5)
    finally:
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        logger.remove(sink)
        logger.remove(traced)
    told = [x for x in lines if "scoring job" in x]
    assert len(told) == 3, told
    first, still, ended = told
    assert first.startswith("ERROR scoring jobs fail, each dropped unscored: organic InferenceTask job rid=rid-0: "
                            "KeyError: 'choices'; a validator bug"), first
    assert [r["exception"] is not None for r in records] == [True], "one traceback, the run's first failure's"
    assert "still failing, 40 more time(s) in the last 61 s" in still and "rid=rid-40" in still, still
    assert ended.startswith("INFO") and "jobs are scored again after 200.0 s (41 failure(s))" in ended, ended
    # and in /metrics, where the loop alert (SN1ValidatorLoopFailing) reads it: it was in the log alone
    text = generate_latest(metrics.registry).decode()
    assert sample(text, "sn1_validator_loop_failures_total", loop="scoring") == 41
    assert sample(text, "sn1_validator_loop_seconds_count", loop="scoring") == 42
