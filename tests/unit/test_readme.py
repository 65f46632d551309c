"""The README's configuration reference and the settings models stay in step: every setting each process
reads is in its table with the default the code really has, and every row names a setting that exists.
Its contents line names every section."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import SecretStr

from shared.settings import ApiSettings, CommonSettings, MinerSettings, ValidatorSettings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
REFERENCE = README[README.index("## Configuration reference"):]
REFERENCE = REFERENCE[:REFERENCE.index("\n## ", 1)]

# Each table of the reference, by the line that introduces it, and the model whose own settings it lists.
TABLES: dict[str, type[CommonSettings]] = {
    "Common to all three processes:": CommonSettings,
    "API (`sn1 api`": ApiSettings,
    "Validator (`sn1 validator`": ValidatorSettings,
    "Miner (`sn1 miner`": MinerSettings,
}

# Defaults the code computes at start rather than states in the model (None or empty there): the row must
# say this, in these words, instead of a value.
COMPUTED = {
    (ApiSettings, "validator_hotkey"): "the API wallet's hotkey",
    (ValidatorSettings, "api_hotkeys"): "the validator's own hotkey",
    (ValidatorSettings, "scoring_inbox_file"): "`<STATE_DIR>/scoring_inbox.db`",
}


def table(intro: str) -> dict[str, str]:
    """``{setting: default cell}`` of the table after ``intro``; ``A` / `B`` rows split in two."""
    start = REFERENCE.index(intro)
    rows: dict[str, str] = {}
    for line in REFERENCE[start:].splitlines()[1:]:
        if rows and not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`([A-Z0-9_]+)`", cells[0])
        defaults = cells[1].split(" / ") if len(names) > 1 else [cells[1]]
        assert len(defaults) == len(names), f"row {line!r}: one default per setting"
        rows.update(zip(names, defaults, strict=True))
    return rows


def own_fields(cls: type[CommonSettings]) -> dict[str, object]:
    """The settings ``cls`` adds to the common ones (all of them for ``CommonSettings``)."""
    common = set() if cls is CommonSettings else set(CommonSettings.model_fields)
    return {name: f for name, f in cls.model_fields.items() if name not in common}


def documented(cell: str) -> str:
    """What a default cell says: its first code span, else its words (``unset``, ``empty``, ...)."""
    code = re.match(r"`([^`]*)`", cell)
    return code.group(1) if code else cell


def matches(value: object, cell: str) -> bool:
    said = documented(cell)
    if value is None or (isinstance(value, SecretStr)):
        return cell.startswith("unset")
    if isinstance(value, bool):
        return said == str(value).lower()
    if isinstance(value, list):
        return said == (",".join(value) if value else "empty") or (not value and cell.startswith("empty"))
    if isinstance(value, dict):  # a table (UPSTREAM_MODEL_ALIASES): empty by default
        return not value and cell.startswith("empty")
    if isinstance(value, int | float):
        try:
            return float(said) == float(value)
        except ValueError:
            return False
    return said == str(value)


@pytest.mark.parametrize("intro", list(TABLES))
def test_every_row_names_a_setting_of_that_process(intro: str) -> None:
    cls = TABLES[intro]
    unknown = sorted(set(table(intro)) - {n.upper() for n in cls.model_fields})
    assert not unknown, f"{intro} documents settings the code does not have: {unknown}"


@pytest.mark.parametrize("intro", list(TABLES))
def test_every_setting_is_in_its_table(intro: str) -> None:
    cls = TABLES[intro]
    missing = sorted(set(n.upper() for n in own_fields(cls)) - set(table(intro)))
    assert not missing, f"settings missing from the README's {intro} table: {missing}"


@pytest.mark.parametrize("intro", list(TABLES))
def test_every_documented_default_is_the_real_one(intro: str) -> None:
    cls = TABLES[intro]
    rows = table(intro)
    wrong = []
    for name, field in own_fields(cls).items():
        cell = rows[name.upper()]
        if (cls, name) == (ValidatorSettings, "task_probabilities"):
            continue  # None in the model; the tasks' own default, checked below
        if (cls, name) in COMPUTED:
            ok = cell == COMPUTED[cls, name]
        else:
            ok = matches(field.get_default(call_default_factory=True), cell)
        if not ok:
            wrong.append(f"{name.upper()}: README {cell!r}, code {field.get_default(call_default_factory=True)!r}")
    assert not wrong, "README defaults that are not the code's:\n" + "\n".join(wrong)


def test_the_miners_own_wallet_default_is_documented() -> None:
    """The miner overrides the common WALLET_NAME default; the common row says so."""
    cell = table("Common to all three processes:")["WALLET_NAME"]
    assert documented(cell) == CommonSettings.model_fields["wallet_name"].default
    assert f"`{MinerSettings.model_fields['wallet_name'].default}` for the miner" in cell


def test_the_documented_task_probabilities_are_the_default_ones() -> None:
    from neurons.validator.tasks import DEFAULT_PROBABILITIES

    cell = table("Validator (`sn1 validator`")["TASK_PROBABILITIES"]
    assert json.loads(documented(cell)) == DEFAULT_PROBABILITIES


def test_readme_names_the_two_commands() -> None:
    assert "make run" in README and "make test" in README


def anchor(head: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", head.strip().lower()).replace(" ", "-")


def test_the_contents_list_names_every_section_and_subsection_in_order() -> None:
    """A 3,000-line README is read by jumping: the contents at the top must name each section and its
    subsections, in order, nested, with the anchor GitHub gives each heading (a renamed or added section
    left it stale; it named the sections alone, so "Error codes" or "Admin endpoints" took a search)."""
    heads = re.findall(r"^(##|###) (.+)$", README, re.M)
    block = README[README.index("**Contents**"):]
    block = block[:block.index("\n\n## ")]
    links = re.findall(r"^( *)- \[(.+)\]\(#([^)]+)\)$", block, re.M)
    assert links == [(" " * 2 * (len(level) - 2), h, anchor(h)) for level, h in heads]


def test_every_link_to_a_heading_names_one() -> None:
    """A link such as "[error code](#error-codes)" in the prose leads somewhere: its anchor is a heading's."""
    anchors = {anchor(h) for h in re.findall(r"^#{1,4} (.+)$", README, re.M)}
    broken = sorted(set(re.findall(r"\]\(#([^)]+)\)", README)) - anchors)
    assert not broken, f"links to no heading: {broken}"


def localnet_options() -> dict[str, str]:
    """``{option: default cell}`` of the table of ``sn1 localnet``'s options under "Two commands"."""
    section = README[README.index("## Two commands"):README.index("\n## Try it")]
    rows = re.findall(r"^\| `(--[a-z-]+)[^`]*` \|([^|]*)\|", section, re.M)
    return {option: cell.strip() for option, cell in rows}


def test_the_localnet_options_table_is_the_parsers() -> None:
    """Every option ``sn1 localnet`` takes is in the table and no other, and a default the parser states (a
    number, a name, a path) is the one the table gives; a cell in words (``generated once``, ``all honest``)
    stands for a default computed at start."""
    import argparse

    from neurons.localnet_args import add_localnet_arguments

    parser = argparse.ArgumentParser()
    add_localnet_arguments(parser)
    actions = {a.option_strings[0]: a for a in parser._actions if a.option_strings[0] != "-h"}
    rows = localnet_options()
    assert sorted(rows) == sorted(actions)
    stated = {o: a.default for o, a in actions.items() if a.default not in (None, False, [])}
    assert {o: documented(rows[o]) for o in stated} == {o: str(d) for o, d in stated.items()}
