"""A small, safe grammar for alert conditions (parsed, never ``eval``-ed).

    condition  := or_expr
    or_expr    := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | "(" or_expr ")" | test | comparison
    test       := ("drop" | "rise" | "change") "(" METRIC ("," ("alpha" | "min_n") "=" NUMBER)* ")"
    comparison := sum OP sum                      (at least one side names a metric)
    sum        := product (("+" | "-") product)*
    product    := atom (("*" | "/") atom)*
    atom       := NUMBER | METRIC | ("-" | "+") atom
    OP         := "<" | "<=" | ">" | ">=" | "==" | "!="
    METRIC     := dotted name, e.g. drift.score, quality.feedback_positive_rate, ref.quality.refusal_rate

Parentheses group conditions, never arithmetic: ``(a - b) > 1`` is rejected, write ``a - b > 1``. One
meaning per parenthesis keeps the parser a plain recursive descent and its errors precise.

Evaluation is three-valued: a comparison whose metric is missing from the window (or NaN, or a division
by zero) is *unknown* (None), and so is a test without enough counts on either side; ``and``/``or``/``not``
follow Kleene logic, so a window without data never fires a rule and never clears one on its own.

The tests compare a proportion of the window with the same proportion of its reference records by
Fisher's exact test on the 2x2 table of counts (``drop``: one-sided, the window lower; ``rise``: higher;
``change``: two-sided, twice the smaller one-sided p-value, so ``change(m, alpha=a)`` is
``drop(m, alpha=a/2) or rise(m, alpha=a/2)``); true when the p-value is at most ``alpha``.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from driftloop.settings.metrics import PROPORTION_COUNTS, REF_PREFIX

MAX_LENGTH = 2000
MAX_DEPTH = 32
DEFAULT_ALPHA = 0.01
DEFAULT_MIN_N = 20
# Counts above this are not tested (unknown): scipy's Fisher test loses precision near 1e10.
MAX_COUNT = 10**9

Metrics = Mapping[str, float | None]


class ConditionError(ValueError):
    """A condition that cannot be parsed; the message shows where."""

    def __init__(self, message: str, text: str, pos: int) -> None:
        shown = text if len(text) <= 120 else text[:117] + "..."
        caret = " " * min(pos, 120) + "^"
        super().__init__(f"{message} at column {pos + 1}\n    {shown}\n    {caret}")
        self.pos = pos


_TOKEN = re.compile(
    r"\s*(?:(?P<num>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)|(?P<op><=|>=|==|!=|<|>)|(?P<arith>[-+*/])"
    r"|(?P<punct>[(),=])|(?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*))"
)
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
_ARITH: dict[str, Callable[[float, float], float]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
}
_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}
_KIND_WORDS = {
    "num": "a number",
    "name": "a metric name",
    "op": "a comparison (<, <=, >, >=, ==, !=)",
    "(": "'('",
    ")": "')'",
    ",": "','",
    "=": "'='",
}
KEYWORDS = frozenset({"and", "or", "not"})
# test name -> the one-sided alternatives whose p-values it takes (change: twice the smaller one)
TESTS: dict[str, tuple[str, ...]] = {"drop": ("less",), "rise": ("greater",), "change": ("less", "greater")}
_TEST_ARGS = ("alpha", "min_n")
_NOT_NUMBERS = frozenset({"nan", "inf", "infinity"})


def _num(v: float) -> str:
    """Shortest text that parses back to exactly ``v``."""
    s = f"{v:g}"
    return s if float(s) == v else repr(v)


def _get(m: Metrics, name: str) -> float | None:
    v = m.get(name)
    if v is None:
        return None
    f = float(v)
    return None if math.isnan(f) else f


# -- arithmetic operands ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Num:
    value: float

    def value_in(self, m: Metrics) -> float | None:
        return self.value

    def names(self) -> list[str]:
        return []

    def __str__(self) -> str:
        return _num(self.value)


@dataclass(frozen=True)
class Metric:
    name: str

    def value_in(self, m: Metrics) -> float | None:
        return _get(m, self.name)

    def names(self) -> list[str]:
        return [self.name]

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Neg:
    arg: Metric

    def value_in(self, m: Metrics) -> float | None:
        v = self.arg.value_in(m)
        return None if v is None else -v

    def names(self) -> list[str]:
        return self.arg.names()

    def __str__(self) -> str:
        return f"-{self.arg}"


@dataclass(frozen=True)
class Arith:
    op: str  # + - * /
    left: Expr
    right: Expr

    def value_in(self, m: Metrics) -> float | None:
        a, b = self.left.value_in(m), self.right.value_in(m)
        if a is None or b is None or (self.op == "/" and b == 0):
            return None
        v = _ARITH[self.op](a, b)
        return None if math.isnan(v) else v

    def names(self) -> list[str]:
        return _unique(self.left.names() + self.right.names())

    def __str__(self) -> str:
        return f"{self.left} {self.op} {self.right}"


Expr = Num | Metric | Neg | Arith


def _unique(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))


# -- conditions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Compare:
    """``METRIC OP NUMBER`` (``NUMBER OP METRIC`` is flipped into this form)."""

    metric: str
    op: str
    value: float

    def eval(self, m: Metrics) -> bool | None:
        v = _get(m, self.metric)
        return None if v is None else _OPS[self.op](v, self.value)

    def metrics(self) -> set[str]:
        return {self.metric}

    def ordered_metrics(self) -> list[str]:
        return [self.metric]

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {_num(self.value)}"


@dataclass(frozen=True)
class Comparison:
    """Any other comparison of two arithmetic operands, e.g. ``m < ref.m - 0.1``."""

    left: Expr
    op: str
    right: Expr

    def eval(self, m: Metrics) -> bool | None:
        a, b = self.left.value_in(m), self.right.value_in(m)
        return None if a is None or b is None else _OPS[self.op](a, b)

    def metrics(self) -> set[str]:
        return set(self.ordered_metrics())

    def ordered_metrics(self) -> list[str]:
        return _unique(self.left.names() + self.right.names())

    def __str__(self) -> str:
        return f"{self.left} {self.op} {self.right}"


@dataclass(frozen=True)
class Counts:
    """The 2x2 table of a proportion test: successes and trials of the window and of its reference."""

    k: int
    n: int
    ref_k: int
    ref_n: int

    def __str__(self) -> str:
        return f"window {self.k}/{self.n} vs reference {self.ref_k}/{self.ref_n}"


def _count(m: Metrics, name: str) -> int | None:
    v = _get(m, name)
    if v is None or not (0 <= v <= MAX_COUNT) or v != int(v):
        return None
    return int(v)


@dataclass(frozen=True)
class ProportionTest:
    """``drop``/``rise``/``change`` of a proportion against the reference: Fisher's exact test of the counts."""

    kind: str  # drop | rise | change
    metric: str
    alpha: float = DEFAULT_ALPHA
    min_n: int = DEFAULT_MIN_N

    def count_names(self) -> list[str]:
        k, n = PROPORTION_COUNTS[self.metric]
        return [k, n, REF_PREFIX + k, REF_PREFIX + n]

    def counts(self, m: Metrics) -> Counts | None:
        """The table, or None when a count is missing or invalid or a side has fewer than ``min_n`` trials."""
        c = [_count(m, name) for name in self.count_names()]
        k, n, rk, rn = c
        if k is None or n is None or rk is None or rn is None or k > n or rk > rn:
            return None
        return Counts(k, n, rk, rn) if min(n, rn) >= self.min_n else None

    def p_value(self, m: Metrics) -> float | None:
        """Fisher's exact p-value of the window against its reference; None: insufficient data."""
        c = self.counts(m)
        if c is None:
            return None
        from scipy import stats  # here, not above: importing the settings must not load scipy (~50 MB)

        table = [[c.k, c.n - c.k], [c.ref_k, c.ref_n - c.ref_k]]
        sides = TESTS[self.kind]
        # Two-sided as doubled one-sided ("central"): consistent with drop/rise, and scipy's minimum-likelihood
        # two-sided p takes ~8 ms at 50 000 records a side where the one-sided ones take ~0.25 ms.
        p = len(sides) * min(float(stats.fisher_exact(table, alternative=a).pvalue) for a in sides)
        return None if math.isnan(p) else min(p, 1.0)

    def eval(self, m: Metrics) -> bool | None:
        p = self.p_value(m)
        return None if p is None else p <= self.alpha

    def metrics(self) -> set[str]:
        return set(self.ordered_metrics()) | set(self.count_names())

    def ordered_metrics(self) -> list[str]:
        return [self.metric, REF_PREFIX + self.metric]

    def __str__(self) -> str:
        args = [self.metric]
        if self.alpha != DEFAULT_ALPHA:
            args.append(f"alpha={_num(self.alpha)}")
        if self.min_n != DEFAULT_MIN_N:
            args.append(f"min_n={self.min_n}")
        return f"{self.kind}({', '.join(args)})"


@dataclass(frozen=True)
class Not:
    arg: Node

    def eval(self, m: Metrics) -> bool | None:
        v = self.arg.eval(m)
        return None if v is None else not v

    def metrics(self) -> set[str]:
        return self.arg.metrics()

    def ordered_metrics(self) -> list[str]:
        return self.arg.ordered_metrics()

    def __str__(self) -> str:
        return f"not ({self.arg})"


@dataclass(frozen=True)
class BoolOp:
    op: str  # and | or
    args: tuple[Node, ...]

    def eval(self, m: Metrics) -> bool | None:
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

    def ordered_metrics(self) -> list[str]:
        return _unique([name for a in self.args for name in a.ordered_metrics()])

    def __str__(self) -> str:
        return f" {self.op} ".join(f"({a})" if isinstance(a, BoolOp) else str(a) for a in self.args)


Node = Compare | Comparison | ProportionTest | Not | BoolOp


# -- parser ------------------------------------------------------------------------------------


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
        if kind == "punct" or (kind == "name" and val in KEYWORDS):
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
        self.open_groups = 0

    def peek(self, ahead: int = 0) -> tuple[str, str, int] | None:
        j = self.i + ahead
        return self.toks[j] if j < len(self.toks) else None

    def error(self, message: str, tok: tuple[str, str, int] | None) -> ConditionError:
        return ConditionError(message, self.text, tok[2] if tok else len(self.text))

    def take(self, *kinds: str) -> tuple[str, str, int]:
        t = self.peek()
        want = " or ".join(_KIND_WORDS.get(k, k) for k in kinds)
        if t is None:
            raise self.error(f"expected {want} but the condition ended", t)
        if t[0] not in kinds:
            hint = " (use == for equality)" if t[0] == "=" and "op" in kinds else ""
            raise self.error(f"expected {want}, got {t[1]!r}{hint}", t)
        self.i += 1
        return t

    def parse(self) -> Node:
        if not self.toks:
            raise ConditionError("empty condition", self.text, 0)
        node = self.or_expr()
        t = self.peek()
        if t is not None:
            raise self.error(f"unexpected {t[1]!r} (missing 'and'/'or'?)", t)
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
            raise self.error(f"nesting deeper than {MAX_DEPTH}", self.peek())
        try:
            t = self.peek()
            if t and t[0] == "not":
                self.i += 1
                return Not(self.not_expr())
            if t and t[0] == "(":
                return self.group()
            if t and t[0] == "name" and (nxt := self.peek(1)) and nxt[0] == "(":
                return self.test()
            return self.comparison()
        finally:
            self.depth -= 1

    def group(self) -> Node:
        self.i += 1
        self.open_groups += 1
        node = self.or_expr()
        self.open_groups -= 1
        close = self.peek()
        if close is None or close[0] != ")":
            raise self.error("missing ')'", close)
        self.i += 1
        return node

    # -- comparisons and arithmetic

    def comparison(self) -> Node:
        start = self.peek()
        left = self.sum()
        if (t := self.peek()) and t[0] == ")" and self.open_groups:
            raise self.error("expected a comparison; parentheses group conditions, not arithmetic", t)
        op = self.take("op")[1]
        right = self.sum()
        if isinstance(left, Metric) and isinstance(right, Num):
            return Compare(left.name, op, right.value)
        if isinstance(left, Num) and isinstance(right, Metric):
            return Compare(right.name, _FLIP[op], left.value)
        if not left.names() and not right.names():
            raise self.error("a comparison needs a metric on one side", start)
        return Comparison(left, op, right)

    def binary(self, ops: str, operand: Callable[[], Expr]) -> Expr:
        """``operand (op operand)*`` for the arithmetic operators in ``ops``, left-associative."""
        node = operand()
        while (t := self.peek()) and t[0] == "arith" and t[1] in ops:
            self.i += 1
            node = Arith(t[1], node, operand())
        return node

    def sum(self) -> Expr:
        return self.binary("+-", self.product)

    def product(self) -> Expr:
        return self.binary("*/", self.atom)

    def atom(self) -> Expr:
        negate = False
        while (t := self.peek()) and t[0] == "arith" and t[1] in "+-":
            self.i += 1
            negate ^= t[1] == "-"
        t = self.take("name", "num")
        if t[0] == "num":
            value = float(t[1])
            if not math.isfinite(value):
                raise self.error(f"number {t[1]} is out of range", t)
            return Num(-value if negate else value)
        self.check_metric_name(t)
        return Neg(Metric(t[1])) if negate else Metric(t[1])

    def check_metric_name(self, t: tuple[str, str, int]) -> None:
        if t[1].lower() in _NOT_NUMBERS:
            raise self.error(f"expected a number, got {t[1]!r}", t)
        if (nxt := self.peek()) and nxt[0] == "(":
            what = "a condition of its own, not a value" if t[1] in TESTS else "not a function"
            raise self.error(f"{t[1]}() is {what}", t)

    # -- statistical tests

    def test(self) -> ProportionTest:
        name = self.take("name")
        if name[1] not in TESTS:
            raise self.error(f"unknown function {name[1]!r}; the tests are drop(), rise() and change()", name)
        self.i += 1  # the "(" seen by not_expr
        metric = self.take("name")
        if metric[1] not in PROPORTION_COUNTS:
            raise self.error(
                f"{name[1]}() tests a proportion with known counts; {metric[1]!r} is not one "
                f"(supported: {', '.join(PROPORTION_COUNTS)})",
                metric,
            )
        kw = self.test_kwargs(name[1])
        alpha, min_n = float(kw.get("alpha", DEFAULT_ALPHA)), int(kw.get("min_n", DEFAULT_MIN_N))
        return ProportionTest(name[1], metric[1], alpha, min_n)

    def test_kwargs(self, fn: str) -> dict[str, float | int]:
        out: dict[str, float | int] = {}
        while self.take(",", ")")[0] == ",":
            key = self.peek()
            named = key and key[0] == "name" and (key[1] in _TEST_ARGS or ((eq := self.peek(1)) and eq[0] == "="))
            if key and not named:
                raise self.error(f"{fn}() takes one metric; give alpha= and min_n= by name", key)
            key = self.take("name")
            if key[1] not in _TEST_ARGS:
                raise self.error(f"unknown argument {key[1]!r} of {fn}(); use alpha= and min_n=", key)
            if key[1] in out:
                raise self.error(f"{key[1]} given twice", key)
            self.take("=")
            out[key[1]] = self.test_arg(key[1])
        return out

    def test_arg(self, key: str) -> float | int:
        sign = 1.0
        if (t := self.peek()) and t[0] == "arith" and t[1] == "-":
            sign = -1.0
            self.i += 1
        t = self.take("num")
        v = sign * float(t[1])
        if key == "alpha" and not 0 < v < 0.5:
            raise self.error(f"alpha must be between 0 and 0.5 (exclusive), got {_num(v)}", t)
        if key == "min_n" and not (v >= 1 and v == int(v) and v <= MAX_COUNT):
            raise self.error(f"min_n must be a whole number from 1 to {MAX_COUNT}, got {t[1]}", t)
        return v if key == "alpha" else int(v)


def ordered_metrics(node: Node) -> list[str]:
    """The metrics worth showing for ``node``, in the order they first appear (tests: the metric and its ref.)."""
    return node.ordered_metrics()


def proportion_tests(node: Node) -> list[ProportionTest]:
    """The statistical tests in ``node``, in order of appearance."""
    if isinstance(node, ProportionTest):
        return [node]
    if isinstance(node, Not):
        return proportion_tests(node.arg)
    if isinstance(node, BoolOp):
        return [t for a in node.args for t in proportion_tests(a)]
    return []


def describe_tests(node: Node, m: Metrics) -> list[str]:
    """One line per test of ``node`` on window ``m``: its p-value and counts, or why it is unknown."""
    out = []
    for t in proportion_tests(node):
        p, c = t.p_value(m), t.counts(m)
        out.append(f"{t}: p={p:.3g} ({c})" if p is not None and c else f"{t}: insufficient data")
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
