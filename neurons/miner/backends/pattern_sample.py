"""A string that fits a JSON schema's ``pattern``: the test model's answer to ``Field(pattern=...)``.

The OpenAI SDK's ``parse`` sends a pydantic model's schema ``strict``, and the API refuses an answer that
does not fit it, so a field such as ``code: str = Field(pattern=r"^[A-Z]{2}-\\d{3}$")`` failed every race
on the local network (the prompt's words fit no such pattern). The sample is built from the parsed
regex, the fewest repeats each (more when ``minLength`` asks), the first branch of each choice, and
``a``/``0``/space for a class; lookarounds are skipped, so a pattern that needs one may not be fitted.

The caller's pattern reaches the miner unchecked: only patterns without a repeat inside a repeat (or a
choice inside one) are ever run against text, as those can backtrack for minutes on a few dozen
characters (``(a+)+$``); a sample is never longer than ``MAX_SAMPLE``.
"""

from __future__ import annotations

import re
import re._constants as sre
import re._parser as sre_parse
import warnings
from typing import Any

MAX_PATTERN = 1000  # characters of a pattern this model parses at all
MAX_SAMPLE = 4096
MAX_STEPS = 20_000  # regex items built for one sample, at most
GROWTH = (0, 1, 2, 4, 8, 16, 32, 64, 256)  # extra repeats tried, in turn, to reach a minLength
CATEGORY_CHARS = {
    sre.CATEGORY_DIGIT: "0", sre.CATEGORY_NOT_DIGIT: "a", sre.CATEGORY_WORD: "a",
    sre.CATEGORY_NOT_WORD: " ", sre.CATEGORY_SPACE: " ", sre.CATEGORY_NOT_SPACE: "a",
}
CANDIDATES = "a0A_ -.x"  # tried, in order, for a negated class ([^...])
REPEATS = (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT)


def parsed(pattern: Any) -> Any:
    """The regex's parse tree, or None for what is no pattern this model can use."""
    if not isinstance(pattern, str) or len(pattern) > MAX_PATTERN:
        return None
    try:
        with warnings.catch_warnings():  # "possible nested set" and the like: the caller's, not ours to log
            warnings.simplefilter("ignore")
            return sre_parse.parse(pattern)
    except (re.error, RecursionError, OverflowError):
        return None


def fits(tree: Any, pattern: str, text: str) -> bool:
    """Whether ``text`` fits ``pattern`` (searched, as JSON Schema's are), told only for a pattern that cannot
    backtrack for long (``safe``); False for any other."""
    if not safe(tree):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return re.search(pattern, text) is not None


def sample(tree: Any, shortest: int = 0, longest: int = MAX_SAMPLE) -> str | None:
    """A string the pattern matches, of ``shortest`` to ``longest`` characters where repeats allow, or None when
    the regex has what this model cannot build (a class with no character it tries, a repeat past ``MAX_SAMPLE``)."""
    best = None
    for grow in GROWTH:
        try:
            value = _Sampler(grow).build(tree)
        except (ValueError, RecursionError):
            return best
        if len(value) > min(longest, MAX_SAMPLE):
            return best
        best = value
        if len(value) >= shortest:
            return value
    return best


def safe(tree: Any, inside_repeat: bool = False) -> bool:
    """No repeat (or choice) inside a repeat: what makes a backtracking regex take exponential time."""
    for op, av in tree:
        if op in REPEATS:
            if inside_repeat or not safe(av[2], True):
                return False
        elif op == sre.BRANCH:
            if inside_repeat or not all(safe(alt, inside_repeat) for alt in av[1]):
                return False
        elif op in (sre.SUBPATTERN, sre.ATOMIC_GROUP, sre.ASSERT, sre.ASSERT_NOT):
            if not safe(av if op == sre.ATOMIC_GROUP else av[-1], inside_repeat):
                return False
        elif op == sre.GROUPREF_EXISTS:
            return False
    return True


class _Sampler:
    """One sample's building: ``grow`` more repeats than each one's least (within its most)."""

    def __init__(self, grow: int) -> None:
        self.grow = grow
        self.groups: dict[int, str] = {}
        self.left = MAX_STEPS

    def build(self, tree: Any) -> str:
        self.left -= len(tree)
        if self.left < 0:  # empty groups repeated thousands of times, inside repeats: no length bounds them
            raise ValueError("pattern too costly")
        return "".join(self.item(op, av) for op, av in tree)

    def item(self, op: Any, av: Any) -> str:
        if op == sre.LITERAL:
            return chr(av)
        if op == sre.NOT_LITERAL:
            return "a" if av != ord("a") else "b"
        if op == sre.ANY:
            return "a"
        if op == sre.IN:
            return _one_of(av)
        if op in REPEATS:
            return self.repeat(*av)
        if op == sre.SUBPATTERN:
            value = self.build(av[3])
            if av[0] is not None:
                self.groups[av[0]] = value
            return value
        if op == sre.ATOMIC_GROUP:
            return self.build(av)
        if op == sre.BRANCH:
            return self.build(av[1][0])
        if op == sre.GROUPREF:
            return self.groups.get(av, "")
        if op in (sre.AT, sre.ASSERT, sre.ASSERT_NOT):
            return ""
        raise ValueError(f"no sample for {op}")

    def repeat(self, least: int, most: int, tree: Any) -> str:
        """``tree`` repeated, never past ``MAX_SAMPLE`` characters (repeats inside repeats multiply)."""
        count = min(least + self.grow, most) if most != sre.MAXREPEAT else least + self.grow
        parts: list[str] = []
        size = 0
        for _ in range(count):
            parts.append(self.build(tree))
            size += len(parts[-1])
            if size > MAX_SAMPLE or len(parts) > MAX_SAMPLE:
                raise ValueError("repeat too long")
        return "".join(parts)


def _one_of(items: list[tuple[Any, Any]]) -> str:
    """A character of a class (``[A-Z]``, ``\\d``, ``[^,]``)."""
    if items and items[0][0] == sre.NEGATE:
        for char in CANDIDATES:
            if not any(_in_item(op, av, char) for op, av in items[1:]):
                return char
        raise ValueError("no candidate outside the class")
    op, av = items[0]
    if op == sre.LITERAL:
        return chr(av)
    if op == sre.RANGE:
        return chr(av[0])
    if op == sre.CATEGORY and av in CATEGORY_CHARS:
        return CATEGORY_CHARS[av]
    raise ValueError(f"no sample for {op}")


def _in_item(op: Any, av: Any, char: str) -> bool:
    if op == sre.LITERAL:
        return ord(char) == av
    if op == sre.RANGE:
        return av[0] <= ord(char) <= av[1]
    if op == sre.CATEGORY:
        return re.fullmatch(_CATEGORY_REGEX.get(av, "(?!)"), char) is not None
    return True  # unknown: count the character as in it


_CATEGORY_REGEX = {
    sre.CATEGORY_DIGIT: r"\d", sre.CATEGORY_NOT_DIGIT: r"\D", sre.CATEGORY_WORD: r"\w",
    sre.CATEGORY_NOT_WORD: r"\W", sre.CATEGORY_SPACE: r"\s", sre.CATEGORY_NOT_SPACE: r"\S",
}
