"""The devnet's live view (rich): the step it is on, the nodes and the replicas they hold, the
epochs the oracles landed, and the jobs' money as the reports settled it (withheld: node pay
refunded to the CSP, part of refunded), redrawn from each ``_devnet.snapshot``."""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

MONEY = ("deposited", "released", "withheld", "refunded", "burned", "locked")


class LiveView:
    def __init__(self) -> None:
        self.step = "starting"
        self.last: dict[str, Any] | None = None
        self.kept: list[str] = []  # --keep: the nodes' APIs, once the run is done

    def progress(self, step: str) -> None:
        self.step = step

    def show(self, snapshot: dict[str, Any]) -> None:
        self.last = snapshot

    def keep(self, apis: list[str]) -> None:
        self.step = "the devnet is up (Ctrl-C stops it); each node's API:"
        self.kept = apis

    def __rich__(self) -> RenderableType:
        parts: list[RenderableType] = [Text(self.step, style="bold")]
        parts += [Text(f"  node {i}: {api}    deedmesh status --via {api}") for i, api in enumerate(self.kept)]
        s = self.last
        if s is None:
            return Group(*parts)
        nodes = Table("node", "license", "state", "replicas held (job/replica)", title=f"epoch {s['epoch']}",
                      title_justify="left")
        for n in s["nodes"]:
            nodes.add_row(n["node"], str(n["license_id"]), "up" if n["up"] else "[red]killed[/]",
                          ", ".join(n["replicas"]) or "-")
        parts.append(nodes)
        landed = ", ".join(str(epoch) for epoch, _ in s["settled"][-8:]) or "none yet"
        parts.append(Text(f"epochs settled on chain: {landed}"))
        money = Table("job", *MONEY, title="the jobs' money as settled (applied on chain by claim, refund, burn)",
                      title_justify="left")
        for job_id, terms in s["money"].items():
            money.add_row(str(job_id), *(str(terms[k]) for k in MONEY))
        parts.append(money)
        return Group(*parts)
