"""An encrypted hotkey, checked without the SDK (the API's supervisor) as the SDK would load it."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.settings import SettingsError
from shared.wallet import check_hotkey, ensure_wallet, hotkey_password_variable, load_hotkey


def test_the_hotkey_password_variable_is_the_one_the_sdk_reads(tmp_path: Path) -> None:
    import bittensor as bt

    for path in (tmp_path / "wallets", "~/.bittensor/wallets"):
        sdk = bt.Wallet("my.wallet", "hot.key", path=str(Path(path).expanduser())).hotkey_file.env_var_name()
        assert hotkey_password_variable("my.wallet", "hot.key", path) == sdk


def test_an_encrypted_hotkey_is_refused_unless_the_sdk_has_its_password(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import bittensor as bt

    wallets = tmp_path / "wallets"
    ensure_wallet("validator", "default", wallets)
    bt.Wallet("validator", "default", path=str(wallets)).create_new_hotkey(
        hotkey_password="correct horse", overwrite=True, suppress=True)
    for check in (check_hotkey, load_hotkey):
        with pytest.raises(SettingsError, match="is encrypted .password-protected."):
            check("validator", "default", wallets)
    # the SDK's own variable holds its password: the workers decrypt it, the supervisor lets them
    monkeypatch.setenv(hotkey_password_variable("validator", "default", wallets), "set")
    check_hotkey("validator", "default", wallets)
