"""Loading a job spec file, with errors that point at the line and column (``file:line:column:
dotted.path: message``): the position comes from walking the composed YAML nodes along pydantic's
error location, so the CSP is pointed at the key they got wrong. ``yaml.safe_load`` semantics
only: no Python tags, and duplicate keys are refused (PyYAML would silently keep the last one).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import (
    BaseModel,
    ValidationError,
)

from ._errors import MeshError
from ._jobspec import (
    _ADAPTER,
    MAX_SPEC_CHARS,
    CarJob,
    ChainDistJob,
    CommandHealth,
    HttpHealth,
    JobSpec,
    RecreateUpdate,
    RollingUpdate,
    TcpHealth,
    WarJob,
)


@dataclass(frozen=True)
class SpecIssue:
    """One problem in a spec; ``line`` and ``column`` are 1-based, None when unknown."""

    line: int | None
    column: int | None
    path: str
    message: str

    def describe(self, source: str) -> str:
        where = source if self.line is None else f"{source}:{self.line}:{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class SpecError(MeshError):
    """A job spec could not be read or is invalid; the message is the first issue plus a count."""

    def __init__(self, source: str, issues: Sequence[SpecIssue]) -> None:
        first, more = issues[0], len(issues) - 1
        text = first.describe(source)
        if more:
            text += f" (and {more} more error{'s' if more > 1 else ''})"
        super().__init__(text)
        self.source = source
        self.issues = tuple(issues)


def load_spec(path: Path) -> JobSpec:
    """Read and validate the spec file at ``path``; raises ``SpecError``."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise _error(str(path), f"cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _error(str(path), f"not UTF-8 (byte {exc.start})") from None
    return parse_spec(text, source=str(path))


def parse_spec(text: str, source: str = "<spec>") -> JobSpec:
    """Validate spec ``text``; ``source`` names it in errors. Raises ``SpecError`` listing every problem.

    Errors are raised ``from None``: a chained ``ValidationError`` would print the input values,
    and a spec may hold values its author would rather not see in logs.
    """
    root, data = _compose(text, source)
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        issues = [_issue(root, err) for err in exc.errors(include_url=False, include_input=False)]
        issues.sort(key=lambda i: (i.line or 0, i.column or 0))
        raise SpecError(source, issues) from None


def _error(source: str, message: str, mark: yaml.Mark | None = None, path: str = "") -> SpecError:
    line, column = (None, None) if mark is None else (mark.line + 1, mark.column + 1)
    return SpecError(source, [SpecIssue(line, column, path, _one_line(message))])


def _one_line(message: str) -> str:
    return message.replace("\r", "\\r").replace("\n", "\\n")


def _compose(text: str, source: str) -> tuple[yaml.MappingNode, object]:
    """Compose (for positions) and construct (for values) with safe_load's rules, duplicates refused."""
    if len(text) > MAX_SPEC_CHARS:
        raise _error(source, f"larger than {MAX_SPEC_CHARS} characters")
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None or (isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null")):
            raise _error(source, "the spec is empty: expected a mapping with kind, name, resources, ...")
        if not isinstance(node, yaml.MappingNode):
            kind = type(node).__name__.removesuffix("Node").lower()
            raise _error(source, f"the spec must be a mapping, not a {kind}", node.start_mark)
        _check_duplicate_keys(node, source)
        return node, loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        problem = exc.problem or exc.context or "invalid YAML"
        raise _error(source, f"invalid YAML: {problem}", exc.problem_mark or exc.context_mark) from None
    except yaml.YAMLError as exc:
        raise _error(source, f"invalid YAML: {exc}") from None
    except RecursionError:
        raise _error(source, "nested too deeply") from None
    finally:
        loader.dispose()


def _check_duplicate_keys(root: yaml.Node, source: str) -> None:
    """Refuse a key given twice in one mapping (PyYAML keeps the last one without a word)."""
    for mapping, path in _mappings(root, (), set()):
        seen: dict[tuple[str, str], yaml.Mark] = {}
        for key, _ in mapping.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            first = seen.setdefault((key.tag, key.value), key.start_mark)
            if first is not key.start_mark:
                where = ".".join((*path, key.value))
                raise _error(source, f"duplicate key (first given at line {first.line + 1})", key.start_mark, where)


def _mappings(
    node: yaml.Node, path: tuple[str, ...], seen: set[int]
) -> Iterator[tuple[yaml.MappingNode, tuple[str, ...]]]:
    """Every mapping node under ``node`` with its dotted path; aliases are visited once."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        yield node, path
        for key, value in node.value:
            yield from _mappings(value, (*path, str(key.value) if isinstance(key, yaml.ScalarNode) else "?"), seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _mappings(item, (*path, str(index)), seen)


def _union_tags(field: str, *models: type[BaseModel]) -> frozenset[str]:
    return frozenset(tag for model in models for tag in get_args(model.model_fields[field].annotation))


# where a discriminated union sits (field path), its discriminator key and tags: pydantic puts the
# chosen tag into an error's loc, where it names no YAML node, so the walk skips it
_UNIONS: dict[tuple[str, ...], tuple[str, frozenset[str]]] = {
    (): ("kind", _union_tags("kind", CarJob, WarJob, ChainDistJob)),
    ("health",): ("type", _union_tags("type", HttpHealth, TcpHealth, CommandHealth)),
    ("update",): ("strategy", _union_tags("strategy", RollingUpdate, RecreateUpdate)),
}


def _issue(root: yaml.MappingNode, err: Any) -> SpecIssue:
    """Turn one pydantic error into an issue positioned at the YAML key or item it is about."""
    loc = tuple(err["loc"])
    ctx = err.get("ctx") or {}
    if err["type"] == "spec_field":
        loc = (*loc, ctx["field"])
    elif err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        loc = (*loc, str(ctx.get("discriminator", "")).strip("'"))
    mark, path = _locate(root, loc)
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "union_tag_not_found":
        _, tags = _UNIONS.get(tuple(path[:-1]), ("", frozenset()))
        message = f"Field required (one of {', '.join(sorted(tags))})"
    return SpecIssue(mark.line + 1, mark.column + 1, ".".join(path), _one_line(message))


def _locate(root: yaml.MappingNode, loc: tuple[str | int, ...]) -> tuple[yaml.Mark, list[str]]:
    """Walk ``loc`` down the composed nodes; return the deepest key or item mark found and the field path.

    A mapping step lands on the key (``resources.memory_mb`` points at ``memory_mb:``), a sequence
    step on the item; a step the YAML lacks (a missing field) stops the walk at its parent.
    """
    node: yaml.Node | None = root
    mark = root.start_mark
    path: list[str] = []
    tag_skipped: yaml.Node | None = None
    for step in loc:
        if step == "[key]":  # dict key errors: the mark is already on the key
            continue
        if node is not tag_skipped and _is_union_tag(node, tuple(path), step):
            tag_skipped = node
            continue
        path.append(str(step))
        node, step_mark = _step(node, step)
        mark = step_mark or mark
    return mark, path


def _step(node: yaml.Node | None, step: str | int) -> tuple[yaml.Node | None, yaml.Mark | None]:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == str(step):
                return value, key.start_mark
    elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and 0 <= step < len(node.value):
        item = node.value[step]
        return item, item.start_mark
    return None, None


def _is_union_tag(node: yaml.Node | None, path: tuple[str, ...], step: str | int) -> bool:
    """Whether ``step`` is the tag pydantic inserted for the union at ``path`` (its YAML says so)."""
    if path not in _UNIONS or not isinstance(node, yaml.MappingNode):
        return False
    discriminator, tags = _UNIONS[path]
    value, _ = _step(node, discriminator)
    return isinstance(value, yaml.ScalarNode) and value.value == step and step in tags

