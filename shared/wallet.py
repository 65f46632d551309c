"""Wallet access: load a hotkey once, create throwaway wallets for the local network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bittensor as bt
from bittensor.keyfiles import KeyfileError

from shared.settings import SettingsError


def load_hotkey(name: str, hotkey: str, path: str | Path) -> Any:
    """Return the hotkey keypair (decoded once; reuse it for every signature).

    A missing or unreadable key file is a configuration problem: ``SettingsError``
    with the path and how to fix it, not a traceback.
    """
    wallet = bt.Wallet(name=name, hotkey=hotkey, path=str(Path(path).expanduser()))
    try:
        return wallet.hotkey
    except (FileNotFoundError, KeyfileError) as e:
        raise SettingsError(
            f"WALLET_NAME/WALLET_HOTKEY/WALLET_PATH: cannot load hotkey '{hotkey}' of wallet '{name}' in {path}: {e}. "
            f"Create it with: btcli wallet create -w {name} -H {hotkey} --wallet-path {path}"
        ) from None


def ensure_wallet(name: str, hotkey: str, path: str | Path) -> Any:
    """Create a password-less wallet if absent (local network only) and return its hotkey."""
    root = Path(path).expanduser()
    hotkey_file = root / name / "hotkeys" / hotkey
    if not hotkey_file.exists():
        bt.wallets.create(name, hotkey, str(root), use_password=False, on_mnemonic=lambda *_: None)
    return load_hotkey(name, hotkey, root)


def coldkey_address(name: str, path: str | Path) -> str:
    return bt.Wallet(name=name, path=str(Path(path).expanduser())).coldkeypub.ss58_address
