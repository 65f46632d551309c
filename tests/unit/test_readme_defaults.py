"""A setting's default stated in the README's prose ("`HEADER_TIMEOUT` (10 s)", "`MEDIA_BYTES_IN_FLIGHT` (default
256 MiB)") is the default the code has, as the Configuration reference's is (tests/unit/test_readme.py): a default
changed in the code and its table left the same fact stated twice with two values."""

from __future__ import annotations

import re
from pathlib import Path

from shared.settings import ApiSettings, CommonSettings, MinerSettings, ValidatorSettings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
UNITS = {"": 1, "s": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
# "`NAME` (N unit)", "`NAME` (default N unit)", "`NAME`, N unit by default"
STATED = re.compile(r"`([A-Z][A-Z0-9_]+)`(?: \((?:default )?|, )([0-9][0-9,]*(?:\.[0-9]+)?)(?: (s|KiB|MiB|GiB))?"
                    r"(?=\)|,? by default|[;:,] )")


def numeric_defaults() -> dict[str, set[float]]:
    """``{NAME: its numeric defaults}``: a name two processes read (``MAX_BODY_BYTES``) may have one each."""
    found: dict[str, set[float]] = {}
    for cls in (CommonSettings, ApiSettings, ValidatorSettings, MinerSettings):
        for name, field in cls.model_fields.items():
            value = field.get_default(call_default_factory=True)
            if isinstance(value, int | float) and not isinstance(value, bool):
                found.setdefault(name.upper(), set()).add(float(value))
    return found


def test_each_default_the_prose_states_is_the_codes() -> None:
    defaults = numeric_defaults()
    stated = [(m, defaults[m.group(1)]) for m in STATED.finditer(README) if m.group(1) in defaults]
    assert len(stated) >= 15, "the pattern no longer finds the README's stated defaults"
    wrong = [f"line {README.count(chr(10), 0, m.start()) + 1}: {m.group(0)!r}, code {sorted(real)}"
             for m, real in stated
             if float(m.group(2).replace(",", "")) * UNITS[m.group(3) or ""] not in real]
    assert not wrong, "README states defaults the code does not have:\n" + "\n".join(wrong)
