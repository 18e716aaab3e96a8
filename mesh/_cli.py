"""The ``deedmesh`` command line: the top-level group, output and error conventions.

Subcommands come from the ``deedmesh.commands`` entry-point group, so each package contributes
its own commands without ``mesh`` importing ``oracle`` (the layering in DESIGN.md).

Exit codes: 0 ok, 1 unexpected error, 2 usage error, 3 chain unreachable, 4 bad deployment record
or artifact, 5 a contract reverted (the error is named), 6 transaction failed, 7 other chain error,
8 keystore error, 9 other node error (or a node unreachable), 10 invalid job spec, 11 a node refused a
submission, 12 a node refused or failed another request (job logs), 13 a job update was rolled back,
14 a job update or scale (or ``chain job --wait-settled``) did not finish in time; contributed
commands add 15 (``audit``: discrepancies) and 16 (``claim``: every report found disagrees with the
chain's root).
"""

from __future__ import annotations

import json
import logging
import sys
from importlib.metadata import entry_points
from typing import Any

import click

from contracts import ArtifactError, ChainError, ChainUnreachable, ContractRevert, DeploymentError, TransactionFailed

from . import _cli_lifecycle  # noqa: F401  (adds ``job update`` and ``job scale``)
from ._cli_job import deploy, job
from ._cli_keys import keys
from ._cli_node import node, status
from ._errors import KeystoreError, MeshError, RequestRefused, SubmissionRefused, UpdateRolledBack, UpdateTimedOut
from ._jobspec_load import SpecError

EXIT_CODES: dict[type[BaseException], int] = {
    ChainUnreachable: 3,
    DeploymentError: 4,
    ArtifactError: 4,
    ContractRevert: 5,
    TransactionFailed: 6,
    ChainError: 7,
    KeystoreError: 8,
    SpecError: 10,
    SubmissionRefused: 11,
    RequestRefused: 12,
    UpdateRolledBack: 13,
    UpdateTimedOut: 14,
    MeshError: 9,
}


_RECORD_FIELDS = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra`` fields a log call added (the epoch, the job, the error ...)."""
    return {k: v for k, v in record.__dict__.items() if k not in _RECORD_FIELDS}


class _JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                               "logger": record.name, "msg": record.getMessage()}
        out.update(_extras(record))
        return json.dumps(out, default=str)


class _TextFormatter(logging.Formatter):
    """``LEVEL logger: message key=value ...``: the ``extra`` fields too (a value with spaces,
    quotes or ``=`` JSON-quoted), then any traceback."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        pairs = [f"{k}={_plain(v)}" for k, v in _extras(record).items()]
        return " ".join([super().formatMessage(record), *pairs])


def _plain(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if text and not any(c in text for c in ' "=\n') else json.dumps(text)


def _configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    handler.setLevel(level.upper())  # records propagated from libraries' loggers skip the root's level
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class _Group(click.Group):
    """Loads contributed commands lazily and turns package errors into exit codes."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | {ep.name for ep in entry_points(group="deedmesh.commands")})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        found = super().get_command(ctx, name)
        if found is not None:
            return found
        for ep in entry_points(group="deedmesh.commands"):
            if ep.name == name:
                command = ep.load()
                assert isinstance(command, click.Command)
                return command
        return None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ChainError, MeshError) as exc:
            code = next(c for t, c in EXIT_CODES.items() if isinstance(exc, t))
            if ctx.find_root().params.get("json_output"):
                click.echo(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
            else:
                click.secho(f"error: {type(exc).__name__}: {exc}", fg="red", err=True)
            ctx.exit(code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--json", "json_output", is_flag=True, help="Machine-readable JSON on stdout.")
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]), help="Log verbosity (stderr).")
@click.option("--log-format", default="text", show_default=True, type=click.Choice(["text", "json"]),
              help="Log line format: text, or one JSON object per line.")
@click.pass_context
def cli(ctx: click.Context, json_output: bool, log_level: str, log_format: str) -> None:
    """deedmesh: decentralized orchestration for licensed edge compute.

    \b
    Exit codes: 0 ok, 2 usage, 3 chain unreachable, 4 bad deployment record or
    artifact, 5 contract revert (named), 6 transaction failed, 7 other chain error,
    8 keystore error, 9 other node error, 10 invalid job spec, 11 a node refused a submission,
    12 a node refused or failed another request (job logs), 13 a job update was rolled back,
    14 a job update or scale (or `chain job --wait-settled`) did not finish in time, 15 audit discrepancies,
    16 a settled report that does not match the chain (claim).
    """
    ctx.ensure_object(dict)
    ctx.obj["json"] = json_output
    _configure_logging(log_level, log_format)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="deedmesh")


cli.add_command(deploy)
cli.add_command(job)
cli.add_command(keys)
cli.add_command(node)
cli.add_command(status)
