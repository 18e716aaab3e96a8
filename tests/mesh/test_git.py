"""The WAR runner's git side (mesh/_git.py), against real git and local repositories.

Remotes are bare repositories under tmp_path, plus two 127.0.0.1 servers: one that accepts and
never answers, one that asks for a password.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mesh._git import GitError, fetch_checkout, redact, remote_commit

COMMIT = re.compile(r"[0-9a-f]{40}")
# The tests' own git calls read none of the tester's configuration (commit.gpgsign, hooks, ...).
AUTHOR = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.org",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.org",
}


def git(*args: str | Path, cwd: Path | None = None) -> str:
    env = {name: value for name, value in os.environ.items() if not name.startswith("GIT_")} | AUTHOR
    done = subprocess.run(["git", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


@dataclass(frozen=True)
class Origin:
    """A bare repository (``url``) and a work clone that commits and pushes to it."""

    bare: Path
    work: Path

    @property
    def url(self) -> str:
        return str(self.bare)

    def commit(self, files: dict[str, str], branch: str = "main") -> str:
        """Writes ``files``, commits them on ``branch`` and pushes; returns the commit id."""
        for name, text in files.items():
            (self.work / name).parent.mkdir(parents=True, exist_ok=True)
            (self.work / name).write_text(text)
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "-m", f"change {sorted(files)}", cwd=self.work)
        git("push", "-q", "origin", f"HEAD:refs/heads/{branch}", cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)

    def tag(self, name: str, commit: str, *, annotated: bool) -> None:
        git("tag", *(["-a", "-m", name] if annotated else []), name, commit, cwd=self.work)
        git("push", "-q", "origin", f"refs/tags/{name}", cwd=self.work)


def make_origin(root: Path) -> Origin:
    origin = Origin(bare=root / "origin.git", work=root / "work")
    git("init", "-q", "--bare", "-b", "main", origin.bare)
    git("init", "-q", "-b", "main", origin.work)
    git("remote", "add", "origin", origin.bare, cwd=origin.work)
    return origin


@pytest.fixture
def origin(tmp_path: Path) -> Origin:
    origin = make_origin(tmp_path / "remote")
    origin.commit({"README": "first\n"})
    return origin


@pytest.fixture
def silent_server() -> Iterator[tuple[str, socket.socket]]:
    """An http URL whose listener never accepts: the kernel completes git's connect, then silence."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/x.git", listener


@pytest.fixture
def password_server() -> Iterator[tuple[str, list[str]]]:
    """``127.0.0.1:<port>/x.git``, answering every request with 401 (asking for a user name and
    password), and the Authorization header of each request, "" when there was none."""
    authorizations: list[str] = []

    class AskForPassword(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            authorizations.append(self.headers.get("Authorization", ""))
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="x"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), AskForPassword)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}/x.git", authorizations
    server.shutdown()
    thread.join()
    server.server_close()


def git_error(call: Callable[..., object], *args: object, **kwargs: object) -> GitError:
    with pytest.raises(GitError) as caught:
        call(*args, **kwargs)
    return caught.value


# remote_commit


def test_remote_commit_follows_the_branch_head_across_pushes(origin: Origin) -> None:
    first = git("rev-parse", "HEAD", cwd=origin.work)
    assert COMMIT.fullmatch(remote_commit(origin.url, "main"))
    assert remote_commit(origin.url, "main") == first
    second = origin.commit({"README": "second\n"})
    assert remote_commit(origin.url, "main") == second != first
    assert remote_commit(f"file://{origin.bare}", "main") == second
    other = origin.commit({"other": "x\n"}, branch="feature/x")
    assert remote_commit(origin.url, "feature/x") == other
    assert remote_commit(origin.url, "main") == second


def test_remote_commit_gives_the_commit_of_a_lightweight_and_an_annotated_tag(origin: Origin) -> None:
    tagged = git("rev-parse", "HEAD", cwd=origin.work)
    origin.tag("light", tagged, annotated=False)
    origin.tag("v1.0", tagged, annotated=True)
    origin.commit({"README": "later\n"})
    assert git("rev-parse", "v1.0", cwd=origin.work) != tagged  # the tag object, not the commit
    assert remote_commit(origin.url, "light") == tagged
    assert remote_commit(origin.url, "v1.0") == tagged


def test_a_branch_wins_over_a_tag_of_the_same_name_in_both_functions(origin: Origin, tmp_path: Path) -> None:
    old = git("rev-parse", "HEAD", cwd=origin.work)
    origin.tag("main", old, annotated=True)
    head = origin.commit({"README": "new\n"})
    assert remote_commit(origin.url, "main") == head
    assert fetch_checkout(origin.url, "main", tmp_path / "co") == head  # git's own DWIM picks the tag


def test_remote_commit_of_a_missing_ref_or_a_non_repository_raises(origin: Origin, tmp_path: Path) -> None:
    error = git_error(remote_commit, origin.url, "nope")
    assert (error.action, error.reason) == ("ls-remote", "no branch or tag nope")
    assert str(error) == f"git ls-remote {origin.bare}: no branch or tag nope"

    (tmp_path / "plain").mkdir()
    error = git_error(remote_commit, str(tmp_path / "plain"), "main")
    assert error.action == "ls-remote"
    assert "does not appear to be a git repository" in error.reason
    assert "and the repository exists" not in error.reason  # git's advice, not the cause
    assert len(error.reason) <= 300


def test_a_silent_remote_times_out_and_git_helpers_are_killed(silent_server: tuple[str, socket.socket]) -> None:
    url, listener = silent_server
    error = git_error(remote_commit, url, "main", timeout_s=1)
    assert (error.action, error.reason) == ("ls-remote", "no answer in 1 s")
    # git-remote-http, git's child, held the connection; it is gone too, so the request ends in EOF.
    listener.settimeout(10)
    connection, _ = listener.accept()
    with connection:
        connection.settimeout(10)
        request = b""
        while chunk := connection.recv(4096):
            request += chunk
        assert request.startswith(b"GET /x.git/info/refs")


def test_a_silent_remote_times_out_a_fetch_and_nothing_is_left(
    silent_server: tuple[str, socket.socket], tmp_path: Path
) -> None:
    error = git_error(fetch_checkout, silent_server[0], "main", tmp_path / "co", timeout_s=1)
    assert (error.action, error.reason) == ("fetch", "not done in 1 s")
    assert not (tmp_path / "co").exists()


# fetch_checkout


def test_fetch_checkout_gives_the_files_of_the_head_commit(origin: Origin, tmp_path: Path) -> None:
    origin.commit({"README": "old\n", "gone": "x\n"})
    (origin.work / "gone").unlink()
    head = origin.commit({"README": "new\n", "src/app.py": "print(1)\n"})
    dest = tmp_path / "co"
    assert fetch_checkout(origin.url, "main", dest) == head
    assert (dest / "README").read_text() == "new\n"
    assert (dest / "src" / "app.py").read_text() == "print(1)\n"
    assert not (dest / "gone").exists()
    assert git("rev-parse", "HEAD", cwd=dest) == head
    assert git("rev-list", "--count", "HEAD", cwd=dest) == "1"  # depth 1
    assert git("status", "--porcelain", cwd=dest) == ""


def test_fetch_checkout_of_a_tag_gives_the_tagged_commit(origin: Origin, tmp_path: Path) -> None:
    tagged = origin.commit({"README": "v1\n"})
    origin.tag("v1", tagged, annotated=True)
    origin.tag("light", tagged, annotated=False)
    origin.commit({"README": "v2\n"})
    for tag in ("v1", "light"):
        dest = tmp_path / tag
        assert fetch_checkout(f"file://{origin.bare}", tag, dest) == tagged
        assert (dest / "README").read_text() == "v1\n"


def test_a_failed_fetch_leaves_nothing_at_dest(origin: Origin, tmp_path: Path) -> None:
    dest = tmp_path / "co"
    error = git_error(fetch_checkout, origin.url, "nope", dest)
    assert (error.action, error.reason) == ("fetch", "no branch or tag nope")
    assert not dest.exists()
    error = git_error(fetch_checkout, str(tmp_path / "missing.git"), "main", dest)
    assert error.action == "fetch"
    assert "does not appear to be a git repository" in error.reason
    assert not dest.exists()


def test_fetch_checkout_refuses_an_existing_dest_and_leaves_it_alone(origin: Origin, tmp_path: Path) -> None:
    dest = tmp_path / "co"
    dest.mkdir()
    (dest / "mine").write_text("keep\n")
    error = git_error(fetch_checkout, origin.url, "main", dest)
    assert (error.action, error.reason) == ("fetch", f"{dest} exists")
    assert (dest / "mine").read_text() == "keep\n"
    error = git_error(fetch_checkout, origin.url, "main", tmp_path / "no" / "parent")
    assert error.reason.startswith(f"cannot create {tmp_path / 'no' / 'parent'}")


def test_fetch_checkout_never_fetches_submodules(origin: Origin, tmp_path: Path) -> None:
    sub = make_origin(tmp_path / "sub")
    sub.commit({"secret": "from the submodule\n"})
    git("-c", "protocol.file.allow=always", "submodule", "add", "-q", sub.bare, "lib", cwd=origin.work)
    head = origin.commit({"README": "with a submodule\n"})
    dest = tmp_path / "co"
    assert fetch_checkout(origin.url, "main", dest) == head
    assert (dest / ".gitmodules").exists()
    assert list((dest / "lib").iterdir()) == []


# what reaches git


def test_an_option_as_repo_or_ref_is_refused_before_git_runs(origin: Origin, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    dest = tmp_path / "co"
    for repo, ref in ((f"--upload-pack=touch {marker}", "main"), (origin.url, "--output=x"), ("", "main")):
        assert git_error(remote_commit, repo, ref).action == "ls-remote"
        error = git_error(fetch_checkout, repo, ref, dest)
        assert error.action == "fetch"
        assert "must be non-empty and not start with '-'" in error.reason
    assert not marker.exists()
    assert not dest.exists()


def test_the_ext_transport_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    repo = f"ext::sh -c touch% {marker}"
    error = git_error(remote_commit, repo, "main")
    assert (error.action, error.reason) == ("ls-remote", "transport 'ext' not allowed")
    error = git_error(fetch_checkout, repo, "main", tmp_path / "co")
    assert (error.action, error.reason) == ("fetch", "transport 'ext' not allowed")
    assert not marker.exists()
    assert not (tmp_path / "co").exists()


def on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, script: str) -> None:
    """A shell script named ``name`` first on PATH."""
    program = tmp_path / "bin" / name
    program.parent.mkdir(exist_ok=True)
    program.write_text(f"#!/bin/sh\n{script}\n")
    program.chmod(0o755)
    monkeypatch.setenv("PATH", f"{program.parent}{os.pathsep}{os.environ['PATH']}")


def test_only_the_transports_a_spec_may_name_are_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # "<helper>::<address>" runs git-remote-<helper> from PATH; git's default would allow it.
    marker = tmp_path / "helper-ran"
    on_path(tmp_path, monkeypatch, "git-remote-evil", f"touch {marker}")
    for repo in ("evil::x", "fd::7"):
        assert git_error(remote_commit, repo, "main").reason == f"transport '{repo.split(':')[0]}' not allowed"
    assert not marker.exists()


def test_ssh_runs_as_no_one_without_the_operators_keys_agent_or_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a fake ssh on PATH records how git runs it, then fails as an unreachable host would
    record = tmp_path / "ssh-called"
    on_path(tmp_path, monkeypatch, "ssh", f'echo "$@" > {record}\necho "agent=$SSH_AUTH_SOCK" >> {record}\nexit 255')
    monkeypatch.setenv("SSH_AUTH_SOCK", str(tmp_path / "operator-agent.sock"))
    assert git_error(remote_commit, "ssh://git@127.0.0.1/o/r.git", "main").action == "ls-remote"
    args, agent = record.read_text().splitlines()
    assert agent == "agent="
    for option in ("-F /dev/null", "BatchMode=yes", "IdentityAgent=none", "IdentitiesOnly=yes",
                   "IdentityFile=/dev/null", "UserKnownHostsFile=/dev/null"):
        assert option in args


def test_the_operators_configuration_and_git_environment_reach_no_git_call(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoy = make_origin(tmp_path / "decoy")
    decoy_head = decoy.commit({"README": "decoy\n"})
    home = tmp_path / "home"
    redirect = f'[url "{decoy.bare}"]\n\tinsteadOf = {origin.bare}\n'
    (home / ".config" / "git").mkdir(parents=True)
    (home / ".gitconfig").write_text(redirect)
    (home / ".config" / "git" / "config").write_text(redirect)
    hooks = tmp_path / "template" / "hooks"
    hooks.mkdir(parents=True)
    (hooks / "post-checkout").write_text(f"#!/bin/sh\ntouch {tmp_path / 'hook-ran'}\n")
    (hooks / "post-checkout").chmod(0o755)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home / ".gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", f"url.{decoy.bare}.insteadOf")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", str(origin.bare))
    monkeypatch.setenv("GIT_DIR", str(decoy.work / ".git"))
    monkeypatch.setenv("GIT_TEMPLATE_DIR", str(hooks.parent))
    # The trap works on a plain git call: it answers for the decoy.
    plain = subprocess.run(
        ["git", "ls-remote", "--", str(origin.bare), "refs/heads/main"], capture_output=True, text=True, check=True
    )
    assert plain.stdout.split()[0] == decoy_head

    head = git("rev-parse", "HEAD", cwd=origin.work)
    assert remote_commit(origin.url, "main") == head
    assert fetch_checkout(origin.url, "main", tmp_path / "co") == head
    assert (tmp_path / "co" / "README").read_text() == "first\n"
    assert not (tmp_path / "hook-ran").exists()


def test_a_remote_asking_for_a_password_gets_none_of_the_operators(
    password_server: tuple[str, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    address, authorizations = password_server
    marker = tmp_path / "asked"
    askpass = tmp_path / "askpass"
    askpass.write_text(f"#!/bin/sh\ntouch {marker}\necho hunter2\n")
    askpass.chmod(0o755)
    monkeypatch.setenv("GIT_ASKPASS", str(askpass))
    monkeypatch.setenv("SSH_ASKPASS", str(askpass))
    (tmp_path / ".netrc").write_text("machine 127.0.0.1 login operator password hunter2\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    error = git_error(remote_commit, f"http://{address}", "main", timeout_s=60)  # fails at once: no prompt
    assert "terminal prompts disabled" in error.reason
    assert not marker.exists()
    assert authorizations
    assert set(authorizations) == {""}  # no ~/.netrc either


# credentials


def test_redact_hides_a_urls_userinfo_only() -> None:
    assert redact("https://user:token@host/x.git") == "https://***@host/x.git"
    assert redact("https://ghp_token@github.com/o/r.git") == "https://***@github.com/o/r.git"
    assert redact("ssh://git@host:2222/o/r.git") == "ssh://***@host:2222/o/r.git"
    assert redact("https://host/x.git") == "https://host/x.git"
    assert redact("git@github.com:o/r.git") == "git@github.com:o/r.git"
    assert redact("/srv/git/r.git") == "/srv/git/r.git"
    assert redact("https://u:p@ss/word@host/x.git") == "https://***@host/x.git"  # an unencoded "@" or "/"


def test_no_error_shows_the_password(password_server: tuple[str, list[str]]) -> None:
    address, _ = password_server
    url = f"http://user:s3cret-pw@{address}"
    error = git_error(remote_commit, url, "main", timeout_s=60)
    assert error.repo == f"http://***@{address}"
    assert "s3cret-pw" not in str(error)
    assert "s3cret-pw" not in error.reason
    # git does not always quote the URL (git:// says "unable to look up user:pw@host"), nor do we.
    for reason in (f"unable to look up user:s3cret-pw@{password_server}", f"failed: {url} and {url}/info/refs"):
        error = GitError(url, "fetch", reason)
        assert "s3cret-pw" not in str(error)
        assert str(error).startswith(f"git fetch http://***@{address}: ")
