"""The ``node run`` configuration file (TOML): the same settings as the flags, which override it.

::

    key = "node.json"                      # keystore (paths are relative to this file)
    password_file = "node.password"
    rpc = "http://127.0.0.1:8545"
    deployment = "deployment.json"         # contract addresses, from `deedmesh chain deploy --out`
    # license_registry = "0x..."           # or the license registry's address instead of a record
    listen = "/ip4/127.0.0.1/tcp/4001"
    bootstrap = ["/ip4/127.0.0.1/tcp/4002/p2p/16Uiu2HA..."]
    api_port = 8700
    tags = ["gpu", "eu-west"]
    heartbeat_interval_ms = 1000           # larger meshes beat slower (BENCHMARKS.md)
    target_peers = 4
    license_refresh_s = 5.0

Unknown keys and wrongly typed values are refused with the key named (a typo must not silently
fall back to a default).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ._errors import ConfigError

PATH_KEYS = ("key", "password_file", "deployment", "operator_token_file")


class NodeFileConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    key: str | None = None
    password_file: str | None = None
    rpc: str | None = None
    deployment: str | None = None
    license_registry: str | None = None
    listen: str | None = None
    bootstrap: list[str] = Field(default_factory=list)
    api_port: int | None = Field(default=None, ge=1, le=65535)
    tags: list[str] = Field(default_factory=list)
    operator_token_file: str | None = None
    heartbeat_interval_ms: int | None = Field(default=None, ge=250, le=60_000)
    target_peers: int | None = Field(default=None, ge=0, le=64)
    license_refresh_s: float | None = Field(default=None, gt=0, le=3600)
    engine: str | None = None
    native_war: bool | None = None


def load_config(path: Path) -> dict[str, Any]:
    """The file's settings (only those it sets), with relative paths resolved against its folder."""
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from exc
    try:
        parsed = NodeFileConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(file)"
        raise ConfigError(f"{path}: {where}", first["msg"]) from exc
    out = parsed.model_dump(exclude_unset=True)
    for k in PATH_KEYS:
        if out.get(k) is not None:
            out[k] = str((path.parent / out[k]).resolve())
    return out
