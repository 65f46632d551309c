"""``tests/xdist_groups.py`` names every module that starts a local subnet shared by its tests: one left out is
started again by each worker that runs one of its tests."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.xdist_groups import ON_THE_SESSION_SUBNET, WITH_A_MODULE_SUBNET, group_of

TESTS = Path(__file__).resolve().parents[1]


def modules() -> dict[str, str]:
    return {f"tests/{p.relative_to(TESTS).as_posix()}": p.read_text() for p in TESTS.rglob("test_*.py")}


def test_every_module_that_shares_a_started_subnet_is_grouped() -> None:
    on_session = {m for m, text in modules().items() if re.search(r"\blocalnet: dict\b", text)}
    own = {m for m, text in modules().items()
           if re.search(r'@pytest\.fixture\(scope="module"\)\n(def|async def) \w+\([^)]*\)[^:]*:\n(.*\n)*?.*LocalNet\(',
                        text)}
    assert on_session == ON_THE_SESSION_SUBNET
    assert own == WITH_A_MODULE_SUBNET


def test_a_test_goes_with_its_group_or_alone() -> None:
    assert group_of("tests/compat/test_docs_examples.py::test_example_runs[pydantic_ai]") == "localnet"
    assert group_of("tests/chaos/test_localnet_faults.py::test_every_request_is_answered_by_an_honest_miner[True]") \
        == "tests/chaos/test_localnet_faults.py"
    assert group_of("tests/unit/test_sse.py::test_x") == "tests/unit/test_sse.py::test_x"


def test_the_suite_runs_without_xdist_too() -> None:
    """``pytest -p no:xdist`` (as one runs a test under a debugger, or where xdist is not installed): the suite's
    xdist hook is optional, not an unknown hook that stopped pytest with an INTERNALERROR before any test ran."""
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider",
                          f"{__file__}::test_a_test_goes_with_its_group_or_alone"],
                         capture_output=True, text=True, timeout=120, cwd=TESTS.parent)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "1 passed" in out.stdout
