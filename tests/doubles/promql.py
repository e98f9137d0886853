"""A PromQL parser for the tests of our alert rules and dashboard where ``promtool`` is not installed:
it parses the whole grammar Prometheus documents (selectors, ranges, subqueries, offsets, functions,
aggregations with by/without, binary operators by precedence with bool/on/ignoring/group_*), checks
the argument types of functions (``rate`` takes a range, ``histogram_quantile`` a scalar and a
vector, ...), and returns the metric names and label matchers every selector uses.

    parsed = parse('sum by (le) (rate(x_bucket{job="a"}[5m]))')
    parsed.type == "vector"; parsed.selectors == [("x_bucket", {"job"})]
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

DURATION = r"(?:\d+(?:ms|s|m|h|d|w|y))+"
_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<duration>\[\s*"""
    + DURATION
    + r"""\s*(?::\s*(?:"""
    + DURATION
    + r""")?\s*)?\])
  | (?P<bare_duration>"""
    + DURATION
    + r"""(?![\w:]))
  | (?P<number>(?:0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[Nn]a[Nn]|[Ii]nf)(?![\w:]))
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>==|!=|>=|<=|=~|!~|[-+*/%^<>=(){},@])
    """,
    re.VERBOSE,
)

AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile",
}  # fmt: skip
AGG_WITH_PARAM = {"count_values": "string", "bottomk": "scalar", "topk": "scalar", "quantile": "scalar"}
R, V, S, STR = "matrix", "vector", "scalar", "string"
_MATH = [
    "abs",
    "ceil",
    "exp",
    "floor",
    "ln",
    "log2",
    "log10",
    "sqrt",
    "sgn",
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atanh",
    "cos",
    "cosh",
    "sin",
    "sinh",
    "tan",
    "tanh",
    "deg",
    "rad",
    "timestamp",
    "histogram_count",
    "histogram_sum",
]
_CALENDAR = ["day_of_month", "day_of_week", "day_of_year", "days_in_month", "hour", "minute", "month", "year"]
_OVER_RANGE = [
    "rate",
    "irate",
    "increase",
    "delta",
    "idelta",
    "deriv",
    "changes",
    "resets",
    "absent_over_time",
    "present_over_time",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "stddev_over_time",
    "stdvar_over_time",
    "last_over_time",
]
# name: (argument types, how many may be left out at the end, result type)
FUNCTIONS: dict[str, tuple[tuple[str, ...], int, str]] = {
    **{f: ((V,), 0, V) for f in _MATH},
    **{f: ((V,), 1, V) for f in _CALENDAR},
    **{f: ((R,), 0, V) for f in _OVER_RANGE},
    "quantile_over_time": ((S, R), 0, V),
    "predict_linear": ((R, S), 0, V),
    "holt_winters": ((R, S, S), 0, V),
    "histogram_quantile": ((S, V), 0, V),
    "histogram_fraction": ((S, S, V), 0, V),
    "clamp": ((V, S, S), 0, V),
    "clamp_max": ((V, S), 0, V),
    "clamp_min": ((V, S), 0, V),
    "round": ((V, S), 1, V),
    "absent": ((V,), 0, V),
    "scalar": ((V,), 0, S),
    "vector": ((S,), 0, V),
    "time": ((), 0, S),
    "pi": ((), 0, S),
    "sort": ((V,), 0, V),
    "sort_desc": ((V,), 0, V),
    "label_replace": ((V, STR, STR, STR, STR), 0, V),
    "label_join": ((V, STR, STR, STR), 0, V),  # and any number of source labels after
}
KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "and",
    "or",
    "unless",
    "atan2",
}
# lowest binding first; each level's operators
PRECEDENCE: list[set[str]] = [
    {"or"},
    {"and", "unless"},
    {"==", "!=", ">", "<", ">=", "<="},
    {"+", "-"},
    {"*", "/", "%", "atan2"},
    {"^"},
]
COMPARISONS = PRECEDENCE[2]
SET_OPERATORS = PRECEDENCE[0] | PRECEDENCE[1]


class PromQLError(ValueError):
    pass


@dataclass
class Parsed:
    type: str
    selectors: list[tuple[str | None, set[str]]] = field(default_factory=list)

    @property
    def metrics(self) -> set[str]:
        return {name for name, _ in self.selectors if name}


@dataclass
class _Tok:
    kind: str
    text: str
    pos: int


def tokenize(text: str) -> list[_Tok]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if not m:
            raise PromQLError(f"unexpected character {text[pos]!r} at {pos} in {text!r}")
        kind = m.lastgroup or ""
        if kind != "ws":
            out.append(_Tok(kind, m.group(), pos))
        pos = m.end()
    out.append(_Tok("eof", "", len(text)))
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = tokenize(text)
        self.i = 0
        self.selectors: list[tuple[str | None, set[str]]] = []

    # ---- tokens
    def peek(self, ahead: int = 0) -> _Tok:
        return self.toks[min(self.i + ahead, len(self.toks) - 1)]

    def take(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def expect(self, text: str) -> _Tok:
        tok = self.take()
        if tok.text != text:
            raise PromQLError(f"expected {text!r} at {tok.pos}, got {tok.text or 'the end'!r} in {self.text!r}")
        return tok

    def at(self, *texts: str) -> bool:
        return self.peek().text in texts

    # ---- grammar
    def parse(self) -> Parsed:
        kind = self.expr(0)
        if self.peek().kind != "eof":
            raise PromQLError(f"unexpected {self.peek().text!r} at {self.peek().pos} in {self.text!r}")
        return Parsed(kind, self.selectors)

    def binary_op(self, level: int) -> str | None:
        tok = self.peek()
        if tok.kind in ("op", "ident") and tok.text in PRECEDENCE[level]:
            return tok.text
        return None

    def expr(self, level: int) -> str:
        if level == len(PRECEDENCE):
            return self.unary()
        left = self.expr(level + 1)
        while (op := self.binary_op(level)) is not None:
            self.take()
            is_bool = False
            if self.at("bool"):
                if op not in COMPARISONS:
                    raise PromQLError(f"bool only modifies comparisons, not {op!r} in {self.text!r}")
                self.take()
                is_bool = True
            self.vector_matching()
            # ^ is right-associative; every other operator left-associative
            right = self.expr(level) if op == "^" else self.expr(level + 1)
            left = self.result_of(op, left, right, is_bool)
        return left

    def vector_matching(self) -> None:
        if self.at("on", "ignoring"):
            self.take()
            self.label_list()
            if self.at("group_left", "group_right"):
                self.take()
                if self.at("("):
                    self.label_list()

    def result_of(self, op: str, left: str, right: str, is_bool: bool) -> str:
        for side in (left, right):
            if side in (R, STR):
                raise PromQLError(f"operator {op!r} cannot take a {side} in {self.text!r}")
        if op in SET_OPERATORS:
            if left != V or right != V:
                raise PromQLError(f"set operator {op!r} needs two instant vectors in {self.text!r}")
            return V
        if op in COMPARISONS and left == S and right == S and not is_bool:
            raise PromQLError(f"comparisons between scalars need bool in {self.text!r}")
        return V if V in (left, right) else S

    def unary(self) -> str:
        if self.at("-", "+"):
            self.take()
            kind = self.unary()
            if kind not in (V, S):
                raise PromQLError(f"unary minus of a {kind} in {self.text!r}")
            return kind
        start = len(self.selectors)
        kind = self.primary()
        is_selector = kind == V and len(self.selectors) == start + 1 and self.toks[self.i - 1].text != ")"
        return self.postfix(kind, is_selector)

    def postfix(self, kind: str, is_selector: bool) -> str:
        while True:
            tok = self.peek()
            if tok.kind == "duration":
                self.take()
                is_subquery = ":" in tok.text
                if kind != V or (not is_subquery and not is_selector):
                    what = "a subquery" if is_subquery else "a range"
                    raise PromQLError(f"{what} {tok.text} needs an instant vector selector before it in {self.text!r}")
                kind = R
            elif tok.text == "offset":
                self.take()
                if self.at("-"):
                    self.take()
                if self.take().kind != "bare_duration":
                    raise PromQLError(f"offset needs a duration in {self.text!r}")
            elif tok.text == "@":
                self.take()
                if self.at("start", "end"):
                    self.take()
                    self.expect("(")
                    self.expect(")")
                elif self.take().kind != "number":
                    raise PromQLError(f"@ needs a timestamp in {self.text!r}")
            else:
                return kind
            is_selector = False

    def primary(self) -> str:
        tok = self.peek()
        if tok.kind == "number":
            self.take()
            return S
        if tok.kind == "string":
            self.take()
            return STR
        if tok.text == "(":
            self.take()
            kind = self.expr(0)
            self.expect(")")
            return kind
        if tok.text == "{":
            self.selector(None)
            return V
        if tok.kind == "ident":
            name = tok.text
            if name in AGGREGATIONS and self.peek(1).text in ("(", "by", "without"):
                return self.aggregation()
            if name in FUNCTIONS and self.peek(1).text == "(":
                return self.function()
            if name in KEYWORDS:
                raise PromQLError(f"unexpected keyword {name!r} at {tok.pos} in {self.text!r}")
            self.selector(name)
            return V
        raise PromQLError(f"unexpected {tok.text or 'end'!r} at {tok.pos} in {self.text!r}")

    def selector(self, name: str | None) -> None:
        if name is not None:
            self.take()
        labels: set[str] = set()
        if self.at("{"):
            self.take()
            while not self.at("}"):
                label = self.take()
                if label.kind != "ident" or ":" in label.text:
                    raise PromQLError(f"expected a label name at {label.pos} in {self.text!r}")
                op = self.take()
                if op.text not in ("=", "!=", "=~", "!~"):
                    raise PromQLError(f"expected a label matcher at {op.pos} in {self.text!r}")
                value = self.take()
                if value.kind != "string":
                    raise PromQLError(f"a label value must be a string at {value.pos} in {self.text!r}")
                if op.text in ("=~", "!~"):
                    try:
                        re.compile(value.text[1:-1])
                    except re.error as exc:
                        raise PromQLError(f"bad regex {value.text} in {self.text!r}: {exc}") from None
                labels.add(label.text)
                if label.text == "__name__":
                    name = name or value.text[1:-1]
                if not self.at("}"):
                    self.expect(",")
            self.expect("}")
        if name is None and not labels:
            raise PromQLError(f"a selector needs a metric name or a matcher in {self.text!r}")
        self.selectors.append((name, labels))

    def label_list(self) -> list[str]:
        self.expect("(")
        names = []
        while not self.at(")"):
            tok = self.take()
            if tok.kind != "ident":
                raise PromQLError(f"expected a label name at {tok.pos} in {self.text!r}")
            names.append(tok.text)
            if not self.at(")"):
                self.expect(",")
        self.expect(")")
        return names

    def aggregation(self) -> str:
        name = self.take().text
        if self.at("by", "without"):
            self.take()
            self.label_list()
        self.expect("(")
        if name in AGG_WITH_PARAM:
            param = self.expr(0)
            if param != AGG_WITH_PARAM[name]:
                raise PromQLError(f"{name} takes a {AGG_WITH_PARAM[name]} first, got a {param} in {self.text!r}")
            self.expect(",")
        inner = self.expr(0)
        if inner != V:
            raise PromQLError(f"{name} aggregates an instant vector, got a {inner} in {self.text!r}")
        self.expect(")")
        if self.at("by", "without"):
            self.take()
            self.label_list()
        return V

    def function(self) -> str:
        name = self.take().text
        wanted, optional, result = FUNCTIONS[name]
        self.expect("(")
        got: list[str] = []
        while not self.at(")"):
            got.append(self.expr(0))
            if not self.at(")"):
                self.expect(",")
        self.expect(")")
        variadic = name == "label_join"
        if not (len(wanted) - optional <= len(got) <= len(wanted) or (variadic and len(got) >= len(wanted))):
            raise PromQLError(f"{name} takes {len(wanted)} argument(s), got {len(got)} in {self.text!r}")
        for n, kind in enumerate(got):
            need = wanted[n] if n < len(wanted) else STR
            if kind != need:
                raise PromQLError(f"{name}'s argument {n + 1} must be a {need}, got a {kind} in {self.text!r}")
        return result


def parse(text: str) -> Parsed:
    """The expression's type (vector, scalar, matrix, string) and selectors; ``PromQLError`` if it is
    not valid PromQL."""
    if not text.strip():
        raise PromQLError("empty expression")
    return _Parser(text).parse()
