"""The git side of the WAR runner: which commit a remote ref names, and a checkout of one commit.

Both functions drive the ``git`` CLI through blocking subprocesses; under trio, call them from a
worker thread (``await trio.to_thread.run_sync(remote_commit, repo, ref)``). The runner polls
``remote_commit`` every ``poll_s`` and, when the commit changed, checks it out with
``fetch_checkout`` into a fresh directory.

The repository and ref come from a job spec, that is from a stranger, so every git call is fenced:

* git reads no operator configuration (no ``url.*.insteadOf``, credential helper or
  ``http.sslVerify``): ``GIT_CONFIG_NOSYSTEM``, ``GIT_CONFIG_GLOBAL=/dev/null``,
  ``HOME=/nonexistent`` (so curl finds no ``~/.netrc`` either) and no inherited ``GIT_*`` variable
  (``GIT_DIR``, ``GIT_CONFIG_COUNT``, ``GIT_SSL_NO_VERIFY``, ...); the rest of the environment
  (``PATH``, ``https_proxy``, ``SSL_CERT_FILE``) is the node's network setup and is kept;
* git never prompts: ``GIT_TERMINAL_PROMPT=0``, failing askpass programs, ssh in batch mode, and
  stdin from ``/dev/null``; a repository needing a password fails at once;
* only the transports the spec allows (https, http, ssh, git, file) are on: ``ext::`` would run
  a command of the spec's choosing, and other ``<helper>::`` transports run helper programs;
* the repo and ref reach git's argv after ``--`` and are refused if they start with ``-``;
* a checkout never fetches submodules and runs no hooks;
* a timeout kills git's whole process group: git runs its remote helpers (``git-remote-http``,
  ``ssh``) as children that ``subprocess.run(timeout=...)`` would leave running, still connected.

Credentials may ride in an https URL (``https://user:token@host/x.git``); they never appear in an
error (``redact``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from ._errors import MeshError

# The transports a job spec may name (mesh._jobspec.WarSection.repo); everything else is refused
# by git itself, whatever the spec validator let through.
_PROTOCOLS = ("https", "http", "ssh", "git", "file")
_CONFIG = (
    *("-c", "protocol.allow=never"),
    *(arg for name in _PROTOCOLS for arg in ("-c", f"protocol.{name}.allow=always")),
    # A fresh ``git init`` has no hooks; this also ignores any the system's template dir installs.
    *("-c", "core.hooksPath=/dev/null"),
)
_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "HOME": "/nonexistent",  # the conventional home of no one: git and curl find nothing there
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ASKPASS": "/bin/false",
    "SSH_ASKPASS": "/bin/false",
    # ssh as no one: not the operator's config, keys, agent or known hosts (a spec must not reach
    # the operator's private repositories); a job's repository over ssh is a public one
    "GIT_SSH_COMMAND": "ssh -F /dev/null -o BatchMode=yes -o IdentityAgent=none -o IdentitiesOnly=yes "
                       "-o IdentityFile=/dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
    "LC_ALL": "C",  # git's messages in English: fetch_checkout reads "couldn't find remote ref"
}
# A URL's scheme, then its userinfo: everything up to the last "@" (before a blank or a quote, for
# URLs inside git's messages). An "@" later in the URL hides more than the userinfo: the safe side.
_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)([^\s'\"]*@)")
_MAX_REASON = 300
_MISSING_REF = "couldn't find remote ref"


class GitError(MeshError):
    """A git operation failed: which repository (credentials redacted), which action, and git's reason."""

    def __init__(self, repo: str, action: str, reason: str) -> None:
        self.repo = redact(repo)
        self.action = action
        self.reason = _scrub(reason, repo)
        super().__init__(f"git {action} {self.repo}: {self.reason}")


def redact(repo: str) -> str:
    """``repo`` with a URL's userinfo replaced by ``***`` (``https://***@host/x.git``).

    An scp-like ``git@host:x`` names an ssh user, no secret, and a path has no userinfo: both are
    returned unchanged.
    """
    return _USERINFO.sub(r"\1***@", repo, count=1)


def remote_commit(repo: str, ref: str, *, timeout_s: float = 30.0) -> str:
    """The commit (40 hex digits) that branch or tag ``ref`` names at ``repo``, asked with ``git ls-remote``.

    A branch wins over a tag of the same name (as in ``fetch_checkout``); an annotated tag gives
    the commit it points to. Raises ``GitError`` with action ``ls-remote`` if ``repo`` or ``ref``
    looks like an option, the remote cannot be read, has no such branch or tag, or does not answer
    within ``timeout_s``.
    """
    _refuse_options(repo, ref, "ls-remote")
    head, tag = f"refs/heads/{ref}", f"refs/tags/{ref}"
    try:
        done = _run(["ls-remote", "--", repo, head, tag, f"{tag}^{{}}"], timeout_s=timeout_s)
    except subprocess.TimeoutExpired:
        raise GitError(repo, "ls-remote", f"no answer in {timeout_s:g} s") from None
    if done.returncode != 0:
        raise GitError(repo, "ls-remote", _reason(done, repo))
    # Patterns match the tail of a ref name (refs/heads/x/refs/heads/main too): keep exact names.
    commits = {name: oid for oid, _, name in (line.partition("\t") for line in done.stdout.splitlines())}
    for name in (head, f"{tag}^{{}}", tag):  # a peeled tag's line ends in ^{}; a lightweight tag has none
        if name in commits:
            return commits[name]
    raise GitError(repo, "ls-remote", f"no branch or tag {ref}")


def fetch_checkout(repo: str, ref: str, dest: Path, *, timeout_s: float = 120.0) -> str:
    """Creates ``dest`` holding branch or tag ``ref`` of ``repo`` (a depth-1 fetch, detached HEAD).

    Returns the commit checked out (40 hex digits). ``dest`` must not exist. On any failure,
    timeout included, ``dest`` is removed again and ``GitError`` with action ``fetch`` is raised;
    ``timeout_s`` bounds the whole operation.
    """
    _refuse_options(repo, ref, "fetch")
    deadline_s = time.monotonic() + timeout_s
    try:
        dest.mkdir()  # not parents: a missing parent is the caller's mistake, not ours to create
    except FileExistsError:
        raise GitError(repo, "fetch", f"{dest} exists") from None
    except OSError as exc:
        raise GitError(repo, "fetch", f"cannot create {dest}: {exc.strerror}") from None
    try:
        return _fetch_into(repo, ref, dest, deadline_s)
    except subprocess.TimeoutExpired:
        shutil.rmtree(dest, ignore_errors=True)
        raise GitError(repo, "fetch", f"not done in {timeout_s:g} s") from None
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _fetch_into(repo: str, ref: str, dest: Path, deadline_s: float) -> str:
    """Fills the empty directory ``dest``; raises ``subprocess.TimeoutExpired`` after ``deadline_s``."""

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        done = _run(["-C", str(dest), *args], timeout_s=deadline_s - time.monotonic())
        if done.returncode != 0:
            raise GitError(repo, "fetch", _reason(done, repo))
        return done

    git("init", "-q")
    # Exact names, branch first, like remote_commit: ``fetch <ref>`` would prefer a tag.
    for name in (f"refs/heads/{ref}", f"refs/tags/{ref}"):
        try:
            git("fetch", "-q", "--depth", "1", "--no-tags", "--no-recurse-submodules", "--", repo, name)
            break
        except GitError as exc:
            if _MISSING_REF not in exc.reason:
                raise
    else:
        raise GitError(repo, "fetch", f"no branch or tag {ref}")
    git("checkout", "-q", "--detach", "--no-recurse-submodules", "FETCH_HEAD")
    return git("rev-parse", "HEAD").stdout.strip()


def _refuse_options(repo: str, ref: str, action: str) -> None:
    # The spec validator refuses these already; they reach git's argv, so refuse them again.
    for field, value in (("repo", repo), ("ref", ref)):
        if not value or value.startswith("-"):
            raise GitError(repo, action, f"{field} must be non-empty and not start with '-'")


def _run(args: list[str], *, timeout_s: float) -> subprocess.CompletedProcess[str]:
    """Runs ``git <args>`` fenced; on timeout kills git's process group and raises ``TimeoutExpired``."""
    argv = ["git", *_CONFIG, *args]
    if timeout_s <= 0:
        raise subprocess.TimeoutExpired(argv, 0)
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("GIT_") and name != "SSH_AUTH_SOCK"} | _ENV
    with subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
        errors="replace",
        start_new_session=True,  # its own process group, so a timeout reaches git's helpers too
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.communicate()  # returns once every process holding the pipes is gone
            raise
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def _reason(done: subprocess.CompletedProcess[str], repo: str) -> str:
    """git's complaint on one line: its first paragraph of stderr, minus warnings and prefixes.

    The last line is often generic advice ("and the repository exists."); the first paragraph
    holds the cause, e.g. "'/x' does not appear to be a git repository; Could not read from remote
    repository.", or ssh's own line before git's.
    """
    paragraph = done.stderr.strip().split("\n\n", 1)[0]
    lines = [
        line.strip().removeprefix("fatal: ").removeprefix("error: ")
        for line in paragraph.splitlines()
        if line.strip() and not line.lower().startswith(("warning:", "hint:"))
    ]
    reason = "; ".join(lines) or f"git exited with status {done.returncode}"
    return _scrub(reason, repo)[:_MAX_REASON]  # scrubbed before cut: a cut could hide the "@"


def _scrub(text: str, repo: str) -> str:
    """``text`` with every URL's userinfo hidden, and ``repo``'s wherever it appears.

    git does not always quote the URL: for ``git://user:pw@host/x`` it says "unable to look up
    user:pw@host", so ``repo``'s own userinfo is replaced even outside a URL.
    """
    if found := _USERINFO.search(repo):
        text = text.replace(found.group(2), "***@")
    return _USERINFO.sub(r"\1***@", text)
