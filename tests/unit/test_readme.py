"""The README's configuration reference names every setting each process reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.settings import ApiSettings, CommonSettings, MinerSettings, ValidatorSettings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
REFERENCE = README[README.index("## Configuration reference"):]


@pytest.mark.parametrize("cls", [CommonSettings, ApiSettings, ValidatorSettings, MinerSettings])
def test_every_setting_is_documented(cls: type) -> None:
    missing = [name.upper() for name in cls.model_fields if f"`{name.upper()}`" not in REFERENCE]
    assert not missing, f"settings missing from the README's configuration reference: {missing}"


def test_readme_names_the_two_commands() -> None:
    assert "make run" in README and "make test" in README
