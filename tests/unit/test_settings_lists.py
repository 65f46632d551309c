"""List settings read as operators write them (``a, b`` or a JSON list), and a value no source can
decode stops the process with one line, not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.settings import (
    ApiSettings,
    CommonSettings,
    MinerSettings,
    SettingsError,
    ValidatorSettings,
    load_settings,
)

A, B = "5F3sa2TJAWMqDhXG6jhV4N8ko9SxwGy8TpaNS1repo5EYjQX", "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty"


@pytest.mark.parametrize(("raw", "want"), [
    (f"{A},{B}", [A, B]),
    (f" {A} , ,{B} ", [A, B]),
    (f'["{A}", "{B}"]', [A, B]),
    ("", []),
])
def test_hotkey_lists_from_the_environment(monkeypatch: pytest.MonkeyPatch, raw: str, want: list[str]) -> None:
    """The README documents these as comma-separated; that form stopped the process with a traceback."""
    monkeypatch.setenv("ALLOWED_HOTKEYS", raw)
    monkeypatch.setenv("API_HOTKEYS", raw)
    assert load_settings(MinerSettings).allowed_hotkeys == want
    assert load_settings(ValidatorSettings).api_hotkeys == want


def test_lists_from_an_env_file(tmp_path: Path) -> None:
    env = tmp_path / ".env.api"
    env.write_text("CORS_ORIGINS=https://app.example.com, http://localhost:3000/\n")
    assert load_settings(ApiSettings, env).cors_origins == ["https://app.example.com", "http://localhost:3000"]


def test_cors_origins_default_to_any_and_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(ApiSettings).cors_origins == ["*"]
    monkeypatch.setenv("CORS_ORIGINS", "")
    assert load_settings(ApiSettings).cors_origins == []


@pytest.mark.parametrize("bad", ["app.example.com", "https://app.example.com/path", "https://"])
def test_a_value_that_is_not_an_origin_is_named(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv("CORS_ORIGINS", f"*,{bad}")
    with pytest.raises(SettingsError, match=f"CORS_ORIGINS: .*'{bad}' is not an origin"):
        load_settings(ApiSettings)


class WithTable(CommonSettings):
    table: dict[str, int] = {}


def test_a_value_its_source_cannot_decode_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TABLE", "{not json")
    with pytest.raises(SettingsError, match="^TABLE: not valid JSON"):
        load_settings(WithTable)


@pytest.mark.parametrize("name", ["API_HOTKEYS", "ALLOWED_HOTKEYS", "VALIDATOR_HOTKEY"])
def test_a_mistyped_hotkey_stops_the_start_naming_it(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """One wrong character in API_HOTKEYS made the validator refuse every organic payload with a 403, and
    nothing said so; a broken JSON list ('["a","b"') was taken as two odd hotkeys."""
    settings = {"API_HOTKEYS": ValidatorSettings, "ALLOWED_HOTKEYS": MinerSettings, "VALIDATOR_HOTKEY": ApiSettings}
    monkeypatch.setenv(name, A[:-1] + "Y")  # its checksum no longer matches
    with pytest.raises(SettingsError, match=f"{name}: .*not a hotkey's SS58 address"):
        load_settings(settings[name])
