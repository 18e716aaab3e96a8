"""Record ``deedmesh/capacity/1``: what a node offers and where to dial it; carried by neighbour
sync (a change skips the batching delay at every hop), re-signed periodically."""

from __future__ import annotations

from pydantic import Field, model_validator

from ._envelope import Payload

TOPIC = "deedmesh/capacity/1"
VERSION = 1
MAX_TAGS = 32
MAX_ADDRS = 8


class Resources(Payload):
    """An amount of each resource; units are in the field names."""

    cpu_millis: int = Field(ge=0, le=10_000_000)
    memory_mb: int = Field(ge=0, le=1 << 40)
    gpus: int = Field(ge=0, le=1024)
    disk_mb: int = Field(ge=0, le=1 << 50)

    def fits_in(self, other: Resources) -> bool:
        return (self.cpu_millis <= other.cpu_millis and self.memory_mb <= other.memory_mb
                and self.gpus <= other.gpus and self.disk_mb <= other.disk_mb)


class Capacity(Payload):
    """Total and free resources, tags and dial addresses, at ``version`` (increases on every change)."""

    version: int = Field(ge=0)
    total: Resources
    free: Resources
    tags: tuple[str, ...] = Field(default=(), max_length=MAX_TAGS)
    addrs: tuple[str, ...] = Field(default=(), max_length=MAX_ADDRS)  # where to dial the node (discovery)

    @model_validator(mode="after")
    def _free_within_total(self) -> Capacity:
        if not self.free.fits_in(self.total):
            raise ValueError("free resources exceed the total")
        if any(not tag or len(tag) > 64 for tag in self.tags):
            raise ValueError("tags must be 1-64 characters")
        if any(not addr or len(addr) > 256 for addr in self.addrs):
            raise ValueError("addrs must be 1-256 characters")
        return self
