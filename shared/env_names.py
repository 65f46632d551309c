"""Mistyped setting names: pydantic-settings ignores a name it does not know, so a misspelt one is never
read and the process starts on the default (``API_PROT=8080`` served on 42170, ``ADMN_KEY=...`` left the
admin routes off, ``STORE_URL: redis://...`` in an env file kept the SQLite store), and nothing said so.

The env file is ours alone: a line that is not ``NAME=value``, a name close to a real setting, or a
setting written with the ``SN1_`` prefix of the README's client variables is refused; any other unknown
name is ignored with a warning (a setting of another process is fine: ``sn1 localnet`` writes some).
The environment holds everyone's variables: a name one edit away from a real setting is warned about,
never refused (another program's ``LOGLEVEL`` is one edit from ``LOG_LEVEL``).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from pathlib import Path

from dotenv.parser import parse_stream

CLIENT_PREFIX = "SN1_"  # SN1_API_KEY, SN1_ADMIN_KEY: the README's client variables; settings have no prefix
CLOSE_RATIO = 0.8  # difflib's similarity above which an unknown env-file name is taken for a typo
MIN_ENVIRONMENT_NAME = 6  # shorter variables of other programs are too often one edit from a setting


def one_edit_apart(a: str, b: str) -> bool:
    """Whether at most one edit (insert, delete, substitute, swap two neighbours) turns ``a`` into ``b``. In
    linear time: every start compares each environment variable with every setting (about a hundred), and
    the full edit distance of each pair took 0.2-0.4 s of CPU, paid before a settings error could be said."""
    if abs(len(a) - len(b)) > 1:
        return False
    i = 0  # the first place they differ
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    if len(a) == len(b):
        # equal or one substituted; else (then i + 1 < len(a)) two neighbours swapped
        return a[i + 1:] == b[i + 1:] or (a[i] == b[i + 1] and a[i + 1] == b[i] and a[i + 2:] == b[i + 2:])
    longer, shorter = (a, b) if len(a) > len(b) else (b, a)
    return longer[i + 1:] == shorter[i:]


def closest(name: str, known: frozenset[str], *, strict: bool) -> str | None:
    """The setting ``name`` was probably meant to be: one edit away, or (``strict`` off) merely similar."""
    if name in known:
        return name
    near = sorted(k for k in known if one_edit_apart(name, k))
    if near:
        return near[0]
    if strict:
        return None
    similar = difflib.get_close_matches(name, sorted(known), n=1, cutoff=CLOSE_RATIO)
    return similar[0] if similar else None


def env_file_problems(path: Path, known: frozenset[str], warn: Callable[[str], None]) -> list[str]:
    """One ``NAME (file:line): ...`` line per entry of the env file at ``path`` that would not be read."""
    with path.open(encoding="utf-8") as f:
        bindings = list(parse_stream(f))
    problems: list[str] = []
    for b in bindings:
        where = f"{path}:{b.original.line}"
        if b.error:  # "API_PORT: 8080", "API_PORT 8080": python-dotenv skips the line without a word
            start = re.match(r"\s*(?:export\s+)?([A-Za-z0-9_.-]*)", b.original.string)
            head = start.group(1) if start else ""  # only the name: the rest may be a secret
            fix = f": write {head.upper()}=value" if head.upper() in known else ""
            problems.append(f"{head or 'line'} ({where}): not a NAME=value line{fix}")
            continue
        if b.key is None:  # a comment or a blank line
            continue
        name = b.key.upper()
        if name in known:
            if b.value is None:
                problems.append(f"{name} ({where}): no '=': write {name}=value ({name}= for empty)")
            continue
        bare = name.removeprefix(CLIENT_PREFIX)
        if bare != name and bare in known:
            problems.append(f"{name} ({where}): settings take no {CLIENT_PREFIX} prefix; did you mean {bare}?")
        elif guess := closest(name, known, strict=False):
            problems.append(f"{name} ({where}): not a setting; did you mean {guess}?")
        else:
            warn(f"{name} ({where}) is not a setting of any sn1 process; ignored")
    return problems


def environment_problems(environ: Mapping[str, str], known: frozenset[str]) -> list[str]:
    """One line per environment variable that is one edit away from a setting (``ADMN_KEY``, ``API_PROT``)."""
    problems = []
    for key in sorted(environ):
        name = key.upper()
        if name in known or len(name) < MIN_ENVIRONMENT_NAME:
            continue
        if guess := closest(name, known, strict=True):
            problems.append(f"{key} (environment) is not a setting; did you mean {guess}? ignored")
    return problems
