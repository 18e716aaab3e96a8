"""The audit's read-back of the chain inputs each published report cites (``_audit``).

A report in the oracles' full format (``_report.EpochReport``) cites ``inputs``: the jobs active on
chain and started by its epoch (ended ones too, until closed) with their price, policy and replica
count then, and the license and standing of every node it names, as the leader read them at
``inputs.block``. Amounts recomputed from false inputs
agree with a root the oracles signed over them, so the recomputation (``verify_report_amounts``)
cannot catch a false input; reading the chain again at the cited block, as followers do before
signing, can:

- ``read_cited_inputs`` reads them: one ``_inputs.read_inputs`` per distinct (epoch, cited block,
  nodes named), into the ``ChainRecord``, so the checks stay pure;
- ``check_cited_inputs``: the cited block is before the block the epoch's root landed in (the
  oracles read it, then built, signed and submitted: a report cannot cite the future of its own
  submission) and not before the deployment; then every field that differs from the chain's
  answer is one finding, naming the job or node, the field, the cited and the chain's value.

A chain that does not serve state at an old block (a pruned node; anvil and eth-tester keep every
block) leaves the report's inputs "not verified", with the chain's answer: neither a discrepancy
nor a pass. An unreachable chain is an error here as everywhere in the audit.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import fields, replace

from contracts import Chain, ChainUnreachable, Deployment

from ._audit_chain import ChainRecord, InputsKey, chain_error
from ._audit_findings import Check, Finding
from ._audit_published import PublishedReport
from ._inputs import read_inputs
from ._report import ChainInputs, EpochReport, JobInput, NodeInput


def compute_inputs_key(report: EpochReport) -> InputsKey:
    """What reading ``report``'s inputs depends on: its epoch, its cited block, and every node it
    names (those it cites, those of its medians, and those of its observations: the leader read
    the licenses of those, so a licensed node left out of the inputs shows)."""
    nodes = {n.node for n in report.inputs.nodes} | {n for n, _ in report.availability}
    nodes |= {row[2] for row in report.tenure}
    for obs in report.observations:
        nodes |= {n for n, _ in obs.availability} | {row[2] for row in obs.tenure}
    return InputsKey(report.epoch, report.inputs.block, frozenset(n.lower() for n in nodes))


def landed_blocks(record: ChainRecord) -> dict[int, int]:
    """The block each settled epoch's root landed in (its ``EpochSettled``)."""
    return {int(e.args["epoch"]): e.at.block for e in record.escrow_events if e.name == "EpochSettled"}


def read_cited_inputs(chain: Chain, record: ChainRecord, published: Iterable[PublishedReport]) -> ChainRecord:
    """``record`` with the chain inputs of every published full-format report read back at its
    cited block (once per ``InputsKey``), or why the chain could not serve them. No read where
    ``check_cited_inputs`` needs none: epochs before ``record.from_epoch`` or never settled, and
    blocks it refuses (after the landing, before the deployment). ``ChainUnreachable`` if the
    chain stops answering."""
    landed = landed_blocks(record)
    reads = dict(record.cited_inputs)
    for report in published:
        full = report.full
        if full is None or report.epoch < record.from_epoch or report.epoch not in landed:
            continue
        key = compute_inputs_key(full)
        if key not in reads and _block_problem(key.block, landed[report.epoch], record.deployment.block) is None:
            reads[key] = _read(chain, record.deployment, key)
    return replace(record, cited_inputs=reads)


def _read(chain: Chain, deployment: Deployment, key: InputsKey) -> ChainInputs | str:
    try:
        return read_inputs(chain, deployment, key.epoch, key.nodes, key.block)
    except ChainUnreachable:
        raise
    except Exception as exc:  # web3, its providers and eth-tester raise many types: chain_error sorts them
        error = chain_error(chain, f"the chain inputs at block {key.block}", exc)
        if isinstance(error, ChainUnreachable):
            raise error from exc
        return f"the chain did not serve its state at block {key.block} ({error}); an archive node serves it"


def check_cited_inputs(report: PublishedReport, landed_block: int,
                       record: ChainRecord) -> tuple[list[Finding], str | None]:
    """``report``'s cited chain inputs against the chain (module docstring): the findings, and a
    line for the audit's "not verified" list if the chain did not serve the cited block (or the
    record holds no read of it)."""
    full = report.full
    if full is None:
        return [], None
    src, epoch, block = report.source, report.epoch, full.inputs.block
    problem = _block_problem(block, landed_block, record.deployment.block)
    if problem is not None:
        return [Finding(Check.REPORT_INPUTS_BLOCK, f"{src}: cites chain inputs at block {block}, {problem}",
                        epoch=epoch)], None
    read = record.cited_inputs.get(compute_inputs_key(full))
    if read is None or isinstance(read, str):
        why = "not read back" if read is None else read
        return [], f"chain inputs cited by {src} (epoch {epoch}, block {block}): {why}"
    return [Finding(Check.REPORT_INPUTS, f"{src}: {detail}", job_id, epoch)
            for job_id, detail in compute_inputs_differences(epoch, full.inputs, read)], None


def _block_problem(block: int, landed: int, deployed: int) -> str | None:
    if block >= landed:
        return f"not before block {landed}, in which its root landed"
    if block < deployed:
        return f"before the deployment (block {deployed})"
    return None


def compute_inputs_differences(epoch: int, cited: ChainInputs, chain: ChainInputs) -> list[tuple[int | None, str]]:
    """(job id or None, one line) for every field of ``epoch``'s ``cited`` inputs unlike ``chain``'s,
    read at the same block: "<job or node> <field>: cited <value>, chain <value> (block <n>)"."""
    at = f"(block {chain.block})"
    out: list[tuple[int | None, str]] = []
    for name in [n for n in ChainInputs.model_fields if n not in ("block", "jobs", "nodes")]:  # hash, bounds
        if getattr(cited, name) != getattr(chain, name):
            out.append((None, f"{name}: cited {getattr(cited, name)}, chain {getattr(chain, name)} {at}"))
    mine, theirs = {j.job_id: j for j in cited.jobs}, {j.job_id: j for j in chain.jobs}
    for job_id in sorted(mine.keys() | theirs.keys()):
        a, b = mine.get(job_id), theirs.get(job_id)
        if a is None or b is None:
            out.append((job_id, f"job {job_id} active in epoch {epoch}: cited {_yes(a)}, "
                                f"chain {_yes(b)} {at}"))
            continue
        out += [(job_id, f"job {job_id} {field}: cited {x}, chain {y} {at}") for field, x, y in _job_fields(a, b)]
    nodes, found = {n.node: n for n in cited.nodes}, {n.node: n for n in chain.nodes}
    for node in sorted(nodes.keys() | found.keys()):
        c, d = nodes.get(node), found.get(node)
        if c is None or d is None or c.license_id != d.license_id:
            out.append((None, f"node {node} license: cited {_license(c)}, chain {_license(d)} {at}"))
        elif c.standing != d.standing:
            out.append((None, f"node {node} (license {c.license_id}) standing: cited {c.standing.value}, chain "
                              f"{d.standing.value} {at}"))
    if not out and cited != chain:  # a field none of the above names: still not the chain's
        out.append((None, f"the cited inputs differ from the chain's {at}"))
    return out


def _job_fields(a: JobInput, b: JobInput) -> list[tuple[str, str, str]]:
    """(field, cited, chain) of every field that differs; the policy's one by one."""
    names = [name for name in JobInput.model_fields if name not in ("job_id", "policy")]
    out = [(name, _text(getattr(a, name)), _text(getattr(b, name))) for name in names
           if getattr(a, name) != getattr(b, name)]
    out += [(f"policy.{f.name}", str(getattr(a.policy, f.name)), str(getattr(b.policy, f.name)))
            for f in fields(a.policy) if getattr(a.policy, f.name) != getattr(b.policy, f.name)]
    return out


def _text(value: object) -> str:
    return value.name.lower() if isinstance(value, enum.Enum) else str(value)


def _yes(job: JobInput | None) -> str:
    return "no" if job is None else "yes"


def _license(node: NodeInput | None) -> str:
    return "none" if node is None else f"{node.license_id} ({node.standing.value})"
