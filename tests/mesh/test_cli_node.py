"""``deedmesh node run``'s refusals: each bad setting gets a precise message and exit code before a
node starts (the running node itself is tested in test_node_processes.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from mesh._cli import cli
from mesh._config import load_config
from mesh._errors import ConfigError
from mesh._identity import NodeIdentity, write_keystore

PASSWORD = "node-password"
IDENT = NodeIdentity(bytes([0x31]) * 32)


def node_run(*args: str) -> Result:
    return CliRunner().invoke(cli, ["node", "run", *args], env={"DEEDMESH_KEY_PASSWORD": PASSWORD})


@pytest.fixture
def key(tmp_path: Path) -> Path:
    return write_keystore(tmp_path / "node.json", IDENT, PASSWORD, scrypt_n=2**10)


def test_missing_and_conflicting_flags_are_usage_errors(key: Path, tmp_path: Path) -> None:
    result = node_run()
    assert result.exit_code == 2
    assert "missing --key, --rpc, --deployment or --license-registry" in result.output
    record = tmp_path / "deployment.json"
    record.write_text("{}")
    result = node_run("--key", str(key), "--rpc", "eth-tester", "--deployment", str(record),
                      "--license-registry", "0x" + "11" * 20)
    assert result.exit_code == 2
    assert "not both" in result.output
    result = node_run("--key", str(key), "--rpc", "eth-tester", "--deployment", str(tmp_path / "absent.json"))
    assert result.exit_code == 2
    assert "absent.json does not exist" in result.output


def test_config_file_errors_name_the_key(tmp_path: Path) -> None:
    cases = {
        "typo = 1\n": "typo",
        'target_peers = "six"\n': "target_peers",
        "heartbeat_interval_ms = 10\n": "heartbeat_interval_ms",
        "key = [\n": "not valid TOML",
    }
    for text, named in cases.items():
        config = tmp_path / "node.toml"
        config.write_text(text)
        result = node_run("--config", str(config))
        assert result.exit_code == 9, text
        assert "ConfigError" in result.output
        assert named in result.output, text


def test_config_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    config = tmp_path / "conf" / "node.toml"
    config.write_text('key = "keys/node.json"\nrpc = "http://127.0.0.1:8545"\nlicense_registry = "0xabc"\n')
    loaded = load_config(config)
    assert loaded == {"key": str(tmp_path / "conf" / "keys" / "node.json"), "rpc": "http://127.0.0.1:8545",
                      "license_registry": "0xabc"}  # only what the file sets; addresses are not paths
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_a_license_registry_that_is_not_a_contract_here_is_refused(key: Path) -> None:
    result = node_run("--key", str(key), "--rpc", "eth-tester", "--license-registry", "0x1234")
    assert result.exit_code == 4
    assert "is not an address" in result.output
    empty = "0x" + "11" * 20
    result = node_run("--key", str(key), "--rpc", "eth-tester", "--license-registry", empty)
    assert result.exit_code == 4
    assert f"no contract at {empty}" in result.output
    result = node_run("--key", str(key), "--rpc", "http://127.0.0.1:9", "--license-registry", empty)
    assert result.exit_code == 3
