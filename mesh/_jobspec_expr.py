"""The placement expression language of job specs (``placement.include`` / ``exclude``): parsed
by hand into a small syntax tree (never ``eval``) and evaluated against a node's tags and total
resources::

    expr     := or
    or       := and ("or" and)*
    and      := not ("and" not)*
    not      := "not" not | primary
    primary  := "(" expr ")" | "has" tag | attribute op integer
    tag      := word | '"' any characters but '"' and control characters '"'
    attribute:= "cpu_millis" | "memory_mb" | "gpus" | "disk_mb"     (the node's totals)
    op       := "<" | "<=" | ">" | ">=" | "==" | "!="

``not`` binds tighter than ``and``, which binds tighter than ``or``; keywords are lowercase;
a word is ``[A-Za-z0-9_][A-Za-z0-9_.:/-]*``. Example: ``has gpu and (gpus >= 2 or not has
"region=eu")``. Parse errors give the 1-based column. ``render_expression`` gives the canonical
text (single spaces, nested ``and``/``or`` parenthesized), so spacing does not change a spec's hash.

Pure: no trio, libp2p, web3 or clock imports.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

from ._wire_capacity import Resources

MAX_EXPRESSION_CHARS = 512  # long enough for any real constraint, short enough to keep parsing trivial
MAX_EXPRESSION_DEPTH = 32  # bounds the parser's recursion on "not not ..." or "((((...": no stack blow-ups


ATTRIBUTES = ("cpu_millis", "memory_mb", "gpus", "disk_mb")
_KEYWORDS = frozenset({"and", "or", "not", "has"})
_OPERATORS: dict[str, Callable[[int, int], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
}
_TOKEN = re.compile(
    r'[ \t]*(?:(?P<paren>[()])|(?P<op><=|>=|==|!=|<|>)|"(?P<string>[^"\x00-\x1f\x7f]*)"'
    r"|(?P<word>[A-Za-z0-9_][A-Za-z0-9_.:/-]*))"
)
_WORD = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/-]*")
_TAG_TEXT = re.compile(r'[^"\x00-\x1f\x7f]{1,64}')


class ExpressionError(ValueError):
    """A placement expression does not parse; ``column`` is 1-based within the expression.

    A ``ValueError`` so that pydantic reports it as a validation error at the expression's field.
    """

    def __init__(self, reason: str, column: int, text: str) -> None:
        super().__init__(f"column {column}: {reason} in {text!r}")
        self.reason = reason
        self.column = column
        self.text = text


@dataclass(frozen=True)
class HasTag:
    """True when the node carries ``tag``."""

    tag: str


@dataclass(frozen=True)
class Compare:
    """True when the node's total ``attribute`` compares to ``value`` by ``op``."""

    attribute: str
    op: str
    value: int


@dataclass(frozen=True)
class Not:
    operand: Expr


@dataclass(frozen=True)
class And:
    operands: tuple[Expr, ...]  # two or more: the parser flattens "a and b and c"


@dataclass(frozen=True)
class Or:
    operands: tuple[Expr, ...]


Expr: TypeAlias = HasTag | Compare | Not | And | Or


@dataclass(frozen=True)
class _Token:
    kind: str  # "paren", "op", "string", "word" or "end"
    text: str
    column: int  # 1-based


def _tokenize(text: str) -> list[_Token]:
    """Split ``text`` into tokens, failing at the first character no token can start with."""
    tokens: list[_Token] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.lastgroup is None:
            column = pos + 1 + (len(text[pos:]) - len(text[pos:].lstrip(" \t")))
            if column > len(text):
                break  # trailing blanks
            reason = "unterminated string" if text[column - 1] == '"' else f"unexpected character {text[column - 1]!r}"
            raise ExpressionError(reason, column, text)
        tokens.append(_Token(match.lastgroup, match.group(match.lastgroup), match.start(match.lastgroup) + 1))
        pos = match.end()
    tokens.append(_Token("end", "", len(text) + 1))
    return tokens


class _Parser:
    """Recursive descent over the token list; one method per grammar rule (see the module docstring)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.pos = 0
        self.depth = 0

    def fail(self, reason: str, token: _Token | None = None) -> ExpressionError:
        token = token or self.peek()
        return ExpressionError(reason, token.column, self.text)

    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def take(self) -> _Token:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def at_word(self, word: str) -> bool:
        token = self.peek()
        return token.kind == "word" and token.text == word

    def parse(self) -> Expr:
        expr = self.parse_or()
        if self.peek().kind != "end":
            raise self.fail(f"expected 'and', 'or' or the end, got {self.peek().text!r}")
        return expr

    def parse_or(self) -> Expr:
        operands = [self.parse_and()]
        while self.at_word("or"):
            self.take()
            operands.append(self.parse_and())
        return operands[0] if len(operands) == 1 else Or(tuple(operands))

    def parse_and(self) -> Expr:
        operands = [self.parse_not()]
        while self.at_word("and"):
            self.take()
            operands.append(self.parse_not())
        return operands[0] if len(operands) == 1 else And(tuple(operands))

    def parse_not(self) -> Expr:
        if not self.at_word("not"):
            return self.parse_primary()
        token = self.take()
        with self.nested(token):
            return Not(self.parse_not())

    def parse_primary(self) -> Expr:
        token = self.take()
        if token.kind == "paren" and token.text == "(":
            with self.nested(token):
                expr = self.parse_or()
            if self.peek().text != ")" or self.peek().kind != "paren":
                raise self.fail(f"expected ')' to close the '(' at column {token.column}")
            self.take()
            return expr
        if token.kind == "word" and token.text == "has":
            return HasTag(self.parse_tag())
        if token.kind == "word" and token.text in ATTRIBUTES:
            return self.parse_comparison(token.text)
        got = "the end" if token.kind == "end" else repr(token.text)
        raise self.fail(f"expected '(', 'not', 'has' or one of {', '.join(ATTRIBUTES)}, got {got}", token)

    def parse_tag(self) -> str:
        token = self.take()
        if token.kind == "string" and _TAG_TEXT.fullmatch(token.text):
            return token.text
        if token.kind == "word" and token.text not in _KEYWORDS and len(token.text) <= 64:
            return token.text
        raise self.fail("expected a tag (a word, or 1-64 characters in double quotes)", token)

    def parse_comparison(self, attribute: str) -> Compare:
        op = self.take()
        if op.kind != "op":
            raise self.fail(f"expected a comparison (<, <=, >, >=, ==, !=) after {attribute!r}", op)
        value = self.take()
        if value.kind != "word" or not value.text.isdigit() or len(value.text) > 19:
            raise self.fail("expected a non-negative integer of at most 19 digits", value)
        return Compare(attribute, op.text, int(value.text))

    def nested(self, token: _Token) -> _Depth:
        return _Depth(self, token)


class _Depth:
    """Counts nesting so hostile input cannot exhaust the Python stack."""

    def __init__(self, parser: _Parser, token: _Token) -> None:
        self.parser = parser
        self.token = token

    def __enter__(self) -> None:
        self.parser.depth += 1
        if self.parser.depth > MAX_EXPRESSION_DEPTH:
            raise self.parser.fail(f"nested deeper than {MAX_EXPRESSION_DEPTH}", self.token)

    def __exit__(self, *exc: object) -> None:
        self.parser.depth -= 1


@functools.lru_cache(maxsize=1024)
def parse_expression(text: str) -> Expr:
    """Parse a placement expression into its AST; raises ``ExpressionError`` with the column.

    Cached: placement evaluates the same few expressions against every node, on every node.
    """
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(f"longer than {MAX_EXPRESSION_CHARS} characters", MAX_EXPRESSION_CHARS + 1, text[:40])
    return _Parser(text).parse()


def evaluate_expression(expr: Expr, tags: frozenset[str], total: Resources) -> bool:
    """Whether a node with ``tags`` and ``total`` resources satisfies ``expr``."""
    if isinstance(expr, HasTag):
        return expr.tag in tags
    if isinstance(expr, Compare):
        return _OPERATORS[expr.op](getattr(total, expr.attribute), expr.value)
    if isinstance(expr, Not):
        return not evaluate_expression(expr.operand, tags, total)
    if isinstance(expr, And):
        return all(evaluate_expression(e, tags, total) for e in expr.operands)
    return any(evaluate_expression(e, tags, total) for e in expr.operands)


def render_expression(expr: Expr) -> str:
    """The canonical text of ``expr``: ``parse_expression(render_expression(e)) == e``."""
    if isinstance(expr, HasTag):
        bare = _WORD.fullmatch(expr.tag) and expr.tag not in _KEYWORDS
        return f"has {expr.tag}" if bare else f'has "{expr.tag}"'
    if isinstance(expr, Compare):
        return f"{expr.attribute} {expr.op} {expr.value}"
    if isinstance(expr, Not):
        inner = render_expression(expr.operand)
        return f"not ({inner})" if isinstance(expr.operand, And | Or) else f"not {inner}"
    joiner = " and " if isinstance(expr, And) else " or "
    # nested groups are always parenthesized: the structure survives a round trip and reads unambiguously
    return joiner.join(
        f"({render_expression(e)})" if isinstance(e, And | Or) else render_expression(e) for e in expr.operands
    )


