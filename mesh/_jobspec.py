"""The job spec (issue 4): the YAML file a CSP writes, its validated model, and the hash it funds.

A spec is a YAML mapping whose ``kind`` (``car``, ``war`` or ``chaindist``) picks one of three
frozen, strict pydantic models sharing the common fields (``name``, ``replicas``, ``resources``,
``placement``, ``ports``, ``env``, ``health``, ``restart``, ``update``); the kind's own section
(``car:``, ``war:`` or ``chaindist:``) must be present and no other kind's section may be.

Loading a file, with errors that point at the line and column, is ``_jobspec_load``.

Ports: ``host`` ports bind 127.0.0.1 unless the port says ``expose: true``, which binds every
interface; publishing a workload to the network is a deliberate act, not a default.

Registry credentials are never inline: ``registry_auth`` names an environment variable
(``password_env``) or a file (``password_file``) on the node, and an inline ``password`` key is
rejected by name, so a secret is never gossiped nor hashed into the chain.

Placement expressions (``placement.include`` / ``placement.exclude``) are the small language of
``_jobspec_expr``, stored in canonical form so spacing does not change the hash.

``spec_hash`` is keccak256 of canonical JSON of the *normalized* spec (defaults filled in,
expressions canonical, required tags sorted): two files that differ only in formatting, comments
or defaults written out hash the same, and that hash is what the CSP funds on chain.

Pure: no trio, libp2p, web3 or clock imports.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    model_validator,
)
from pydantic_core import PydanticCustomError

from contracts import keccak

from ._envelope import canonical
from ._jobspec_expr import evaluate_expression, parse_expression, render_expression
from ._wire_capacity import Resources

MAX_SPEC_CHARS = 64 * 1024  # a spec travels in 16 KiB gossip envelopes; anything far larger is a mistake
MAX_EXPRESSION_CHARS = 512  # long enough for any real constraint, short enough to keep parsing trivial
MAX_EXPRESSION_DEPTH = 32  # bounds the parser's recursion on "not not ..." or "((((...": no stack blow-ups
MAX_EXPRESSIONS = 16
MAX_TAGS = 32
MAX_PORTS = 32
MAX_ENV = 128
MAX_ARGV = 64

# ---------------------------------------------------------------------------------------------
# The spec models
# ---------------------------------------------------------------------------------------------

T = TypeVar("T")


def _list_as_tuple(value: object) -> object:
    """YAML gives lists; strict mode takes only tuples for tuple fields (which keep specs immutable)."""
    if isinstance(value, list):
        return tuple(value)
    if not isinstance(value, tuple):
        raise ValueError("Input should be a list")
    return value


Seq = Annotated[tuple[T, ...], BeforeValidator(_list_as_tuple)]


def _check_job_name(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", value):
        raise ValueError("must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit")
    return value


def _canonical_expression(value: str) -> str:
    return render_expression(parse_expression(value))


def _sorted_unique(value: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted(set(value)))


def _no_leading_dash(value: str) -> str:
    """Refuses values git would read as an option (``--upload-pack=...``): they reach git's argv."""
    if value.startswith("-"):
        raise ValueError("must not start with '-'")
    return value


JobName = Annotated[str, AfterValidator(_check_job_name)]
EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=128)]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Expression = Annotated[str, AfterValidator(_canonical_expression)]
PortNumber = Annotated[int, Field(ge=1, le=65535)]
Arg = Annotated[str, StringConstraints(max_length=4096)]
Argv = Annotated[Seq[Arg], Field(min_length=1, max_length=MAX_ARGV)]
ImageRef = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$", max_length=255)]
FilePath = Annotated[str, StringConstraints(pattern=r"^/", max_length=4096)]  # absolute: relative to what?


def _field_error(field: str, message: str) -> PydanticCustomError:
    """A model-level error that names the field it is about, so the loader can point at it."""
    return PydanticCustomError("spec_field", message, {"field": field})


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class ReplicaResources(Resources):
    """What one replica needs; a node's free ``Resources`` must cover it. CPU and memory are required."""

    cpu_millis: int = Field(gt=0, le=10_000_000)
    memory_mb: int = Field(gt=0, le=1 << 40)
    gpus: int = Field(default=0, ge=0, le=1024)
    disk_mb: int = Field(default=0, ge=0, le=1 << 50)


class Placement(_Model):
    """Which nodes may run a replica: all ``tags`` present, every ``include`` true, no ``exclude`` true."""

    tags: Annotated[Seq[Tag], AfterValidator(_sorted_unique)] = Field(default=(), max_length=MAX_TAGS)
    include: Seq[Expression] = Field(default=(), max_length=MAX_EXPRESSIONS)
    exclude: Seq[Expression] = Field(default=(), max_length=MAX_EXPRESSIONS)

    def matches(self, tags: frozenset[str], total: Resources) -> bool:
        """Whether a node with ``tags`` and ``total`` resources is eligible for this job."""
        return (
            tags.issuperset(self.tags)
            and all(evaluate_expression(parse_expression(e), tags, total) for e in self.include)
            and not any(evaluate_expression(parse_expression(e), tags, total) for e in self.exclude)
        )


class Port(_Model):
    """A container port; ``host`` binds 127.0.0.1 unless ``expose`` (then every interface)."""

    container: PortNumber
    protocol: Literal["tcp", "udp"] = "tcp"
    host: PortNumber | None = None
    expose: bool = False

    @model_validator(mode="after")
    def _expose_needs_host(self) -> Port:
        if self.expose and self.host is None:
            raise _field_error("expose", "expose: true needs a host port")
        return self


class _HealthBase(_Model):
    interval_s: int = Field(default=10, ge=1, le=3600)
    timeout_s: int = Field(default=5, ge=1, le=3600)
    retries: int = Field(default=3, ge=1, le=100)
    start_period_s: int = Field(default=0, ge=0, le=3600)

    @model_validator(mode="after")
    def _timeout_within_interval(self) -> _HealthBase:
        if self.timeout_s > self.interval_s:
            raise _field_error("timeout_s", "timeout_s must not exceed interval_s")
        return self


class HttpHealth(_HealthBase):
    """Healthy when ``GET http://127.0.0.1:port/path`` answers 2xx or 3xx."""

    type: Literal["http"]
    path: Annotated[str, StringConstraints(pattern=r"^/\S*$", max_length=1024)] = "/"
    port: PortNumber


class TcpHealth(_HealthBase):
    """Healthy when a TCP connection to ``port`` opens."""

    type: Literal["tcp"]
    port: PortNumber


class CommandHealth(_HealthBase):
    """Healthy when ``argv`` exits 0 (inside the workload's container or directory)."""

    type: Literal["command"]
    argv: Argv


HealthCheck = Annotated[HttpHealth | TcpHealth | CommandHealth, Field(discriminator="type")]


class Backoff(_Model):
    """Delay before restart n is ``min(initial_s * multiplier**n, max_s)``."""

    initial_s: int = Field(default=1, ge=1, le=3600)
    max_s: int = Field(default=300, ge=1, le=86_400)
    multiplier: float = Field(default=2.0, ge=1.0, le=10.0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _initial_within_max(self) -> Backoff:
        if self.initial_s > self.max_s:
            raise _field_error("initial_s", "initial_s must not exceed max_s")
        return self


class RestartPolicy(_Model):
    policy: Literal["always", "on-failure", "never"] = "always"
    backoff: Backoff = Backoff()


class RollingUpdate(_Model):
    """Replace replicas a few at a time; at least one of the two budgets must be positive to progress.
    A replica that is not healthy on the new spec within ``progress_deadline_s`` of starting on it
    fails the update, and every replica goes back to the previous spec (``_rollout``)."""

    strategy: Literal["rolling"] = "rolling"
    max_unavailable: int = Field(default=0, ge=0, le=64)
    max_surge: int = Field(default=1, ge=0, le=64)
    progress_deadline_s: int = Field(default=300, ge=5, le=86_400)

    @model_validator(mode="after")
    def _can_progress(self) -> RollingUpdate:
        if self.max_unavailable == 0 and self.max_surge == 0:
            raise _field_error("max_surge", "max_unavailable and max_surge cannot both be 0")
        return self


class RecreateUpdate(_Model):
    """Stop every replica, then start the new ones (for workloads that cannot run two versions)."""

    strategy: Literal["recreate"]
    progress_deadline_s: int = Field(default=300, ge=5, le=86_400)


UpdateStrategy = Annotated[RollingUpdate | RecreateUpdate, Field(discriminator="strategy")]


class RegistryAuth(_Model):
    """Registry login; the password is a *reference* to a secret on the node, never the secret."""

    username: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    password_env: EnvName | None = None
    password_file: FilePath | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_inline_password(cls, data: Any) -> Any:
        if isinstance(data, dict) and "password" in data:
            raise _field_error("password", "inline passwords are refused: use password_env or password_file")
        return data

    @model_validator(mode="after")
    def _one_reference(self) -> RegistryAuth:
        if (self.password_env is None) == (self.password_file is None):
            raise _field_error("password_env", "give exactly one of password_env or password_file")
        return self


class CarSection(_Model):
    """A container image run through the Docker Engine API."""

    image: ImageRef
    command: Argv | None = None
    registry_auth: RegistryAuth | None = None
    pull: Literal["always", "if-missing", "never"] = "if-missing"
    image_file: FilePath | None = None  # a docker-archive tarball loaded instead of pulling

    @model_validator(mode="after")
    def _archive_or_registry(self) -> CarSection:
        if self.image_file is not None and self.registry_auth is not None:
            raise _field_error("registry_auth", "registry_auth is for pulling; image_file loads an archive instead")
        if self.image_file is not None and self.pull == "never":
            raise _field_error("pull", "pull: never with image_file would never load the archive")
        return self


class WarSection(_Model):
    """A git repository: check out ``ref``, run ``build`` then ``run`` in the toolchain ``image`` with
    the checkout mounted at ``/app``, and follow new commits every ``poll_s``."""

    image: ImageRef
    pull: Literal["always", "if-missing", "never"] = "if-missing"

    repo: Annotated[
        str,
        StringConstraints(pattern=r"^((https?|ssh|git|file)://\S+|[\w.-]+@[\w.-]+:\S+|/\S*)$", max_length=1024),
        AfterValidator(_no_leading_dash),
    ]
    ref: Annotated[
        str, StringConstraints(pattern=r"^[A-Za-z0-9._/-]+$", max_length=255), AfterValidator(_no_leading_dash)
    ] = "main"
    build: Argv | None = None
    build_timeout_s: int = Field(default=600, ge=1, le=86_400)
    run: Argv
    poll_s: int = Field(default=60, ge=1, le=86_400)


class Worker(_Model):
    """A ChainDist worker: a container ``image``, and the ``command`` each shard runs in it (with
    ``SHARD``, ``SHARDS`` and ``JOB_ID`` set, and its part of the input on stdin through ``sh``)."""

    image: ImageRef | None = None  # required today: shards run in containers (a native runner is to come)
    command: Argv | None = None

    @model_validator(mode="after")
    def _something_to_run(self) -> Worker:
        if self.image is None:
            raise _field_error("image", "a worker needs an image (shards run in containers)")
        return self


class ChainDistSection(_Model):
    """Fan ``shards`` shards out to workers, then run ``aggregate`` over their results."""

    shards: int = Field(ge=1, le=1024)
    worker: Worker
    aggregate: Argv  # run in the worker image with the shards' outputs on stdin, in shard order
    input: Annotated[str, StringConstraints(max_length=65_536)] | None = None  # lines dealt out to the shards
    shard_timeout_s: int = Field(default=600, ge=1, le=86_400)


_SECTIONS = ("car", "war", "chaindist")


class _JobBase(_Model):
    """The fields every kind shares."""

    name: JobName
    replicas: int = Field(default=1, ge=1, le=64)
    resources: ReplicaResources
    placement: Placement = Placement()
    ports: Seq[Port] = Field(default=(), max_length=MAX_PORTS)
    env: dict[EnvName, Annotated[str, StringConstraints(max_length=4096)]] = Field(default={}, max_length=MAX_ENV)
    health: HealthCheck | None = None
    restart: RestartPolicy = RestartPolicy()
    update: UpdateStrategy = RollingUpdate()

    @model_validator(mode="before")
    @classmethod
    def _section_matches_kind(cls, data: Any) -> Any:
        """Runs first: with the wrong section, errors inside either section would only be noise."""
        if not isinstance(data, dict):
            return data
        kind = data.get("kind")
        for section in _SECTIONS:
            if section != kind and section in data:
                raise _field_error(section, f"a {kind} job takes a {kind}: section, not {section}:")
        if kind not in data:
            raise _field_error("kind", f"a {kind} job needs a {kind}: section")
        return data

    @model_validator(mode="after")
    def _distinct_host_ports(self) -> _JobBase:
        bound = [(p.host, p.protocol) for p in self.ports if p.host is not None]
        if len(bound) != len(set(bound)):
            raise _field_error("ports", "two ports bind the same host port and protocol")
        return self


class CarJob(_JobBase):
    kind: Literal["car"]
    car: CarSection

    @model_validator(mode="after")
    def _in_place_needs_an_unavailable_budget(self) -> CarJob:
        # a job with a udp port cannot run two versions of a replica side by side (the node's fronts
        # carry tcp only): each replica that moves is down until its new container is up
        if updated_in_place(self) and isinstance(self.update, RollingUpdate) and self.update.max_unavailable == 0:
            raise _field_error("update", "a car job with a udp port is updated in place, a replica down at a "
                                         "time: set max_unavailable >= 1 (or strategy: recreate)")
        return self


class WarJob(_JobBase):
    kind: Literal["war"]
    war: WarSection

    @model_validator(mode="after")
    def _tcp_ports(self) -> WarJob:
        # the node holds each port and hands new connections to the new version once it is healthy
        if any(p.protocol != "tcp" for p in self.ports):
            raise _field_error("ports", "a war job's ports are tcp: a rollout moves connections to the new version")
        return self


class ChainDistJob(_JobBase):
    kind: Literal["chaindist"]
    chaindist: ChainDistSection


JobSpec = Annotated[CarJob | WarJob | ChainDistJob, Field(discriminator="kind")]
_ADAPTER: TypeAdapter[CarJob | WarJob | ChainDistJob] = TypeAdapter(JobSpec)


def parse_spec_json(data: dict[str, Any]) -> JobSpec:
    """A spec from its normalized JSON form (as relayed in job records); ``ValidationError`` if bad."""
    return _ADAPTER.validate_python(data)


def spec_hash(spec: JobSpec) -> bytes:
    """keccak256 of the canonical JSON of the normalized spec: the 32 bytes the CSP funds on chain.

    Normalized means defaults filled in, so formatting, comments and defaults written out or left
    implicit never change it; any real change does.
    """
    return normalized_spec_hash(spec.model_dump(mode="json"))


def updated_in_place(spec: CarJob | WarJob | ChainDistJob) -> bool:
    """Whether a job's replicas move to a new spec in place (stopped, then started again): a CAR
    job with a udp port. The others' run behind the node's fronts, where a new revision starts
    beside the serving one (``_fronted``)."""
    return isinstance(spec, CarJob) and any(p.protocol != "tcp" for p in spec.ports)


def revision_of(spec: JobSpec) -> str:
    """A job's revision: the first 8 hex digits of keccak256 over the normalized spec without
    ``replicas`` and ``update``, so a scale or a new update strategy alone changes no replica
    (``_rollout``); anything else a replica runs with does."""
    body = spec.model_dump(mode="json")
    del body["replicas"], body["update"]
    return keccak(canonical(body))[:4].hex()


def normalized_spec_hash(normalized: dict[str, Any]) -> bytes:
    """``spec_hash`` of a spec given in its normalized JSON form (``spec.model_dump(mode="json")``,
    as job records relay it), hashed as it is: sorted keys, no spaces, ASCII only."""
    return keccak(canonical(normalized))


