"""A small, safe grammar for alert conditions (parsed, never ``eval``-ed).

    condition  := or_expr
    or_expr    := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | "(" or_expr ")" | comparison
    comparison := METRIC OP NUMBER | NUMBER OP METRIC
    OP         := "<" | "<=" | ">" | ">=" | "==" | "!="
    METRIC     := dotted name, e.g. drift.score, quality.feedback_positive_rate, drift.feature.latency_ms

Evaluation is three-valued: a comparison whose metric is missing from the window is *unknown*
(None); ``and``/``or``/``not`` follow Kleene logic, so a window without data never fires a rule
and never clears one on its own.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

MAX_LENGTH = 2000
MAX_DEPTH = 32


class ConditionError(ValueError):
    """A condition that cannot be parsed; the message shows where."""

    def __init__(self, message: str, text: str, pos: int) -> None:
        shown = text if len(text) <= 120 else text[:117] + "..."
        caret = " " * min(pos, 120) + "^"
        super().__init__(f"{message} at column {pos + 1}\n    {shown}\n    {caret}")
        self.pos = pos


_TOKEN = re.compile(
    r"\s*(?:(?P<num>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)|(?P<op><=|>=|==|!=|<|>)"
    r"|(?P<par>[()])|(?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*))"
)
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}
_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}
_KIND_WORDS = {"num": "a number", "name": "a metric name", "op": "a comparison (<, <=, >, >=, ==, !=)"}
KEYWORDS = frozenset({"and", "or", "not"})


@dataclass(frozen=True)
class Compare:
    metric: str
    op: str
    value: float

    def eval(self, m: Mapping[str, float | None]) -> bool | None:
        v = m.get(self.metric)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return None
        return _OPS[self.op](float(v), self.value)

    def metrics(self) -> set[str]:
        return {self.metric}

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value:g}"


@dataclass(frozen=True)
class Not:
    arg: Node

    def eval(self, m: Mapping[str, float | None]) -> bool | None:
        v = self.arg.eval(m)
        return None if v is None else not v

    def metrics(self) -> set[str]:
        return self.arg.metrics()

    def __str__(self) -> str:
        return f"not ({self.arg})"


@dataclass(frozen=True)
class BoolOp:
    op: str  # and | or
    args: tuple[Node, ...]

    def eval(self, m: Mapping[str, float | None]) -> bool | None:
        vals = [a.eval(m) for a in self.args]
        if self.op == "and":
            if any(v is False for v in vals):
                return False
            return None if any(v is None for v in vals) else True
        if any(v is True for v in vals):
            return True
        return None if any(v is None for v in vals) else False

    def metrics(self) -> set[str]:
        out: set[str] = set()
        for a in self.args:
            out |= a.metrics()
        return out

    def __str__(self) -> str:
        return f" {self.op} ".join(f"({a})" if isinstance(a, BoolOp) else str(a) for a in self.args)


Node = Compare | Not | BoolOp


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    if len(text) > MAX_LENGTH:
        raise ConditionError(f"condition is longer than {MAX_LENGTH} characters", text[:120], 0)
    out: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            bad = pos + (len(text[pos:]) - len(text[pos:].lstrip()))
            raise ConditionError(f"unexpected character {text[bad]!r}", text, bad)
        kind = m.lastgroup or ""
        val = m.group(kind)
        start = m.start(kind)
        if kind == "name" and val in KEYWORDS:
            kind = val
        out.append((kind, val, start))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokenize(text)
        self.i = 0
        self.depth = 0

    def peek(self) -> tuple[str, str, int] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, *kinds: str) -> tuple[str, str, int]:
        t = self.peek()
        want = " or ".join(_KIND_WORDS.get(k, k) for k in kinds)
        if t is None:
            raise ConditionError(f"expected {want} but the condition ended", self.text, len(self.text))
        if t[0] not in kinds:
            raise ConditionError(f"expected {want}, got {t[1]!r}", self.text, t[2])
        self.i += 1
        return t

    def parse(self) -> Node:
        if not self.toks:
            raise ConditionError("empty condition", self.text, 0)
        node = self.or_expr()
        t = self.peek()
        if t is not None:
            raise ConditionError(f"unexpected {t[1]!r} (missing 'and'/'or'?)", self.text, t[2])
        return node

    def chain(self, op: str, operand: Callable[[], Node]) -> Node:
        """``operand (op operand)*``: one operand as is, several as one BoolOp."""
        args = [operand()]
        while (t := self.peek()) and t[0] == op:
            self.i += 1
            args.append(operand())
        return args[0] if len(args) == 1 else BoolOp(op, tuple(args))

    def or_expr(self) -> Node:
        return self.chain("or", self.and_expr)

    def and_expr(self) -> Node:
        return self.chain("and", self.not_expr)

    def not_expr(self) -> Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            t = self.peek()
            raise ConditionError(f"nesting deeper than {MAX_DEPTH}", self.text, t[2] if t else 0)
        try:
            t = self.peek()
            if t and t[0] == "not":
                self.i += 1
                return Not(self.not_expr())
            if t and t[1] == "(":
                self.i += 1
                node = self.or_expr()
                close = self.peek()
                if close is None or close[1] != ")":
                    raise ConditionError("missing ')'", self.text, close[2] if close else len(self.text))
                self.i += 1
                return node
            return self.comparison()
        finally:
            self.depth -= 1

    def comparison(self) -> Node:
        left = self.take("name", "num")
        op = self.take("op")
        right = self.take("num" if left[0] == "name" else "name")
        if left[0] == "name":
            return Compare(left[1], op[1], float(right[1]))
        return Compare(right[1], _FLIP[op[1]], float(left[1]))


def ordered_metrics(node: Node) -> list[str]:
    """The metrics of ``node`` in the order they first appear in the condition."""
    if isinstance(node, Compare):
        return [node.metric]
    out: list[str] = []
    for a in (node.arg,) if isinstance(node, Not) else node.args:
        out += [m for m in ordered_metrics(a) if m not in out]
    return out


def parse_condition(text: str) -> Node:
    """Parse ``text`` into an AST; raises ConditionError saying what and where."""
    if not isinstance(text, str):
        raise ConditionError("condition must be a string", str(text), 0)
    node = _Parser(text).parse()
    for name in node.metrics():
        if "(" in name or "__" in name:
            raise ConditionError(f"invalid metric name {name!r}", text, text.find(name))
    return node
