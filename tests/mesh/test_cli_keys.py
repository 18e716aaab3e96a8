"""``deedmesh keys`` as an operator uses it: the command line in process (click's runner, with the
environment and stdin it would get; ``tests/test_cli.py`` runs the installed script itself)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner
from eth_account import Account

from mesh._cli import cli


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def run(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> Ran:
    """One command, with ``env`` set and ``$DEEDMESH_KEY_PASSWORD`` unset unless ``env`` sets it."""
    result = CliRunner().invoke(cli, list(args), input=stdin,
                                env={"DEEDMESH_KEY_PASSWORD": None, **(env or {})})  # type: ignore[dict-item]
    return Ran(result.exit_code, result.stdout, result.stderr)


def test_new_show_verify_and_import(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("correct horse\n")
    out = run("--json", "keys", "new", "--out", str(tmp_path / "node.json"), "--password-file", str(pw))
    assert out.returncode == 0, out.stderr
    created = json.loads(out.stdout)
    assert (tmp_path / "node.json").stat().st_mode & 0o777 == 0o600
    shown = json.loads(run("--json", "keys", "show", str(tmp_path / "node.json")).stdout)
    assert shown["address"].lower() == created["address"].lower()
    verified = run("--json", "keys", "show", "--verify", str(tmp_path / "node.json"),
                   env={"DEEDMESH_KEY_PASSWORD": "correct horse"})
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["peer_id"].startswith("16Uiu2HA")

    secret = "0x" + "5a" * 32
    imported = run("--json", "keys", "import", "--out", str(tmp_path / "imp.json"), "--password-file", str(pw),
                   stdin=secret + "\n")
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["address"] == Account.from_key(secret).address
    assert "5a5a5a" not in imported.stdout + imported.stderr  # the key is never echoed


def test_errors_have_exit_codes(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("right\n")
    path = tmp_path / "k.json"
    assert run("keys", "new", "--out", str(path), "--password-file", str(pw)).returncode == 0
    again = run("keys", "new", "--out", str(path), "--password-file", str(pw))
    assert again.returncode == 8
    assert "already exists" in again.stderr
    wrong = run("keys", "show", "--verify", str(path), env={"DEEDMESH_KEY_PASSWORD": "wrong"})
    assert wrong.returncode == 8
    assert "wrong password" in wrong.stderr
    no_password = run("keys", "new", "--out", str(tmp_path / "x.json"))  # stdin is not a terminal
    assert no_password.returncode == 2
    assert "no password" in no_password.stderr
    bad_key = run("keys", "import", "--out", str(tmp_path / "y.json"), "--password-file", str(pw), stdin="zz")
    assert bad_key.returncode == 8
    assert "32 bytes of hex" in bad_key.stderr
