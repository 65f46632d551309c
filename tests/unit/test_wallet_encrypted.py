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


class _Stop(Exception):
    """Raised where the start-up path goes past loading the hotkey (the metagraph is read next)."""


@pytest.mark.parametrize(("role", "main_module"), [("miner", "neurons.miner.main"),
                                                   ("validator", "neurons.validator.main"), ("api", "api.worker")])
def test_a_start_reads_the_hotkey_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, role: str,
                                            main_module: str) -> None:
    """``sn1`` checked the hotkey before loading the role's modules, then the role read and decoded it again: read
    once now, and handed in."""
    import importlib

    from shared.cli import main
    from shared.settings import SETTING_NAMES
    from shared.wallet import hotkey_file
    from tests.ports import free_ports

    wallets = tmp_path / "wallets"
    ensure_wallet("w", "default", wallets)
    api, scoring, miner = free_ports(3)
    env = tmp_path / f"{role}.env"
    env.write_text(f"WALLET_NAME=w\nWALLET_PATH={wallets}\nMETAGRAPH_FILE={tmp_path / 'mg.json'}\n"
                   f"STATE_DIR={tmp_path / 'state'}\nSTORE_URL=sqlite:///{tmp_path / 'keys.db'}\n"
                   f"API_PORT={api}\nSCORING_API_PORT={scoring}\nMINER_PORT={miner}\n")
    for name in [k for k in __import__("os").environ if k.upper() in SETTING_NAMES]:
        monkeypatch.delenv(name)
    key_file, reads = hotkey_file("w", "default", wallets), []
    real_read = Path.read_bytes

    def counted(self: Path) -> bytes:
        if self == key_file:
            reads.append(self)
        return real_read(self)

    def stop(*_: object, **__: object) -> None:
        raise _Stop

    monkeypatch.setattr(Path, "read_bytes", counted)
    module = importlib.import_module(main_module)
    monkeypatch.setattr(module.MetagraphView, "from_settings", stop)
    monkeypatch.setattr(module, "setup_logging", lambda *_, **__: None)  # the test process's sinks stay as they are
    with pytest.raises(_Stop):
        main([role, "--env-file", str(env)])
    assert len(reads) == 1, f"the hotkey file was read {len(reads)} times"
