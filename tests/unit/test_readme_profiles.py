"""The miner profiles the README names (`sn1 localnet --miner-profiles`, `MINER_PROFILE`) are the ones a miner
takes: "Reliability" lists every fault profile and counts them, "Seeing it work" describes every quality profile
but ``honest``. A profile added or renamed in the code and not here was one a reader could not find."""

from __future__ import annotations

import re
from pathlib import Path

from neurons.miner.profiles import FAULT_PROFILES, QUALITY_PROFILES, all_profiles

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def section(heading: str) -> str:
    start = README.index(heading)
    return README[start:README.index("\n#", start + 1)]


def test_reliability_lists_and_counts_every_fault_profile() -> None:
    all_profiles()  # fills the registries
    said = re.search(r"`neurons/miner/faults\.py`, (\d+) profiles: ([^;]*);", section("## Reliability"))
    assert said, "Reliability no longer introduces the fault profiles as '`neurons/miner/faults.py`, N profiles: ...;'"
    listed = re.findall(r"`([a-z0-9-]+)`", said.group(2))
    assert sorted(listed) == sorted(FAULT_PROFILES)
    assert int(said.group(1)) == len(FAULT_PROFILES)


def test_seeing_it_work_describes_every_quality_profile() -> None:
    all_profiles()
    described = re.findall(r"^- `([a-z0-9-]+)`:", section("### Seeing it work"), re.M)
    assert sorted(described) == sorted(set(QUALITY_PROFILES) - {"honest"})
