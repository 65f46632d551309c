"""Wallet access: load a hotkey once, check one before a fleet starts, create throwaway wallets for the local
network.

The SDK (``bittensor``) is imported where a key is loaded, not here: its ``__init__`` imports the EVM and
Ethereum packages (~0.3 s of CPU), which the API's supervisor, that only checks the hotkey, never needs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bittensor_core import KeyfileError, deserialize_keypair_from_keyfile_data, keyfile_data_is_encrypted

from shared.settings import SettingsError


def load_hotkey(name: str, hotkey: str, path: str | Path, *, read: Any | None = None) -> Any:
    """Return the hotkey keypair (decoded once; reuse it for every signature).

    A missing or unreadable key file is a configuration problem: ``SettingsError``
    with the path and how to fix it, not a traceback; so is an encrypted one (``refuse_encrypted``), which the
    SDK would ask a password for. The file is read once (``_read_hotkey``, the SDK's own decoding), or not at all
    when ``read`` is the keypair ``check_hotkey`` returned at start (``sn1`` checks it before the role's modules
    load, and hands it in); only an encrypted one whose password the SDK's variable holds is left to the SDK's
    wallet to decrypt.
    """
    keypair = read if read is not None else _read_hotkey(name, hotkey, path)
    if keypair is not None:
        return keypair
    import bittensor as bt

    try:
        return bt.Wallet(name=name, hotkey=hotkey, path=str(Path(path).expanduser())).hotkey
    except (OSError, KeyfileError) as e:  # a wrong password in its variable, or the file gone meanwhile
        raise _unloadable(name, hotkey, path, e) from None


def check_hotkey(name: str, hotkey: str, path: str | Path) -> Any | None:
    """``load_hotkey``'s check without the SDK, for ``sn1`` before a role's modules load and for the API's
    supervisor, which forks its workers only once the key is known good (``_read_hotkey``): the keypair, to hand to
    ``load_hotkey`` (the file was read at start and again by the role), or None for one whose password the SDK's
    variable holds, left to the role (each API worker: ~3 s of CPU) to decrypt."""
    return _read_hotkey(name, hotkey, path)


def _read_hotkey(name: str, hotkey: str, path: str | Path) -> Any | None:
    """The hotkey's keypair, from the file the SDK's wallet reads (``hotkey_file``) decoded by the SDK's own key
    binding (``bittensor_core``, as ``Keyfile.get_keypair`` does); None for an encrypted one whose password the SDK's
    variable holds (any other encrypted one is refused: ``refuse_encrypted``)."""
    try:
        data = hotkey_file(name, hotkey, path).read_bytes()
        return None if refuse_encrypted(name, hotkey, path, data) else deserialize_keypair_from_keyfile_data(data)
    except (OSError, KeyfileError) as e:  # missing, a directory, not ours to read, not a key
        raise _unloadable(name, hotkey, path, e) from None


def refuse_encrypted(name: str, hotkey: str, path: str | Path, data: bytes) -> bool:
    """Whether the hotkey file's ``data`` is encrypted (password-protected), for a key whose password the SDK's
    environment variable (``hotkey_password_variable``) holds; without it, ``SettingsError``. The SDK asks for the
    password on the terminal, which a service has none of: its prompt failed with a traceback (EOFError) at start,
    in every worker with ``WORKERS`` > 1. A serving node signs with an unencrypted hotkey, as the SDK makes them
    by default."""
    if not keyfile_data_is_encrypted(data):
        return False
    if hotkey_password_variable(name, hotkey, path) in os.environ:
        return True
    raise SettingsError(
        f"WALLET_NAME/WALLET_HOTKEY/WALLET_PATH: hotkey '{hotkey}' of wallet '{name}' in {path} is encrypted "
        f"(password-protected), and a node has no terminal to ask its password on: use an unencrypted hotkey, as "
        f"btcli makes them (from its mnemonic: btcli wallet regen-hotkey -w {name} -H {hotkey} --wallet-path {path} "
        f"--overwrite)")


def hotkey_password_variable(name: str, hotkey: str, path: str | Path) -> str:
    """The environment variable the SDK reads an encrypted hotkey's password from before it prompts
    (``bittensor.keyfiles.Keyfile.env_var_name``: ``BT_PW_`` and the file's path, upper-cased, its separators
    and dots as ``_``), named without importing the SDK."""
    return "BT_PW_" + str(hotkey_file(name, hotkey, path)).replace(os.sep, "_").replace(".", "_").upper()


def hotkey_file(name: str, hotkey: str, path: str | Path) -> Path:
    """Where the SDK's wallet keeps a hotkey: ``<path>/<name>/hotkeys/<hotkey>`` (the one place this module assumes
    its layout)."""
    return Path(path).expanduser() / name / "hotkeys" / hotkey


def _unloadable(name: str, hotkey: str, path: str | Path, reason: Exception) -> SettingsError:
    return SettingsError(
        f"WALLET_NAME/WALLET_HOTKEY/WALLET_PATH: cannot load hotkey '{hotkey}' of wallet '{name}' in {path}: "
        f"{reason}{_remedy(name, hotkey, path)}")


def _remedy(name: str, hotkey: str, path: str | Path) -> str:
    """The ``btcli`` line that makes a missing hotkey, and the wallet's hotkeys by name (``WALLET_HOTKEY`` may be
    misspelt); nothing for one that exists (the reason says what is wrong with it). In a wallet that exists it is
    ``new-hotkey``: ``btcli wallet create`` there, as this line said, asks to overwrite the wallet's coldkey (a yes
    loses it, and the funds with it unless its mnemonic was kept) and fails with a traceback on a no."""
    wallet = Path(path).expanduser() / name
    try:
        if hotkey_file(name, hotkey, path).exists():
            return ""
        if not wallet.is_dir():
            return f". Create it with: btcli wallet create -w {name} -H {hotkey} --wallet-path {path}"
        hotkeys = sorted(p.name for p in (wallet / "hotkeys").glob("*")
                         if p.is_file() and not p.name.endswith("pub.txt"))
    except OSError:  # a directory this user cannot enter, a name too long: the reason says it, no btcli line helps
        return ""
    listed = f" (its hotkeys: {', '.join(hotkeys[:10])})" if hotkeys else ""
    return f". Add it to the wallet with: btcli wallet new-hotkey -w {name} -H {hotkey} --wallet-path {path}{listed}"


def ensure_wallet(name: str, hotkey: str, path: str | Path) -> Any:
    """Create a password-less wallet if absent (local network only) and return its hotkey."""
    import bittensor as bt

    root = Path(path).expanduser()
    if not hotkey_file(name, hotkey, root).exists():
        bt.wallets.create(name, hotkey, str(root), use_password=False, on_mnemonic=lambda *_: None)
    return load_hotkey(name, hotkey, root)


def coldkey_address(name: str, path: str | Path) -> str:
    import bittensor as bt

    return bt.Wallet(name=name, path=str(Path(path).expanduser())).coldkeypub.ss58_address
