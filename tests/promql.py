"""The metric names a PromQL expression reads, for checking rules and panels against what the worker exports."""

from __future__ import annotations

import re

_TOKEN = re.compile(
    r"""
    (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<matchers>\{(?:"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|[^}"'])*\})
  | (?P<range>\[[^\]]*\])
  | (?P<number>(?:0x[0-9a-fA-F]+|[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)[a-z]*)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<space>\s+)
  | (?P<other>.)
""",
    re.VERBOSE,
)
_AGGREGATIONS = {
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
}
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Every metric a PromQL expression selects by name: identifiers that are not functions, aggregations,
    keywords, or label names in grouping lists, label matchers, strings and ranges."""
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(expr) if m.lastgroup != "space"]
    names: set[str] = set()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "ident":
            lowered = text.lower()
            if lowered in _GROUPING:
                if following == "(":  # a list of label names, not metrics
                    i = _closing(tokens, i + 1)
            elif following == "(" or lowered in _AGGREGATIONS or lowered in _KEYWORDS:
                pass  # a function, an aggregation (`sum by (le) (...)`) or an operator
            else:
                names.add(text)
        elif kind == "other" and text == "{":
            raise ValueError(f"unbalanced label matchers in {expr!r}")
        i += 1
    return names


def _closing(tokens: list[tuple[str | None, str]], start: int) -> int:
    """The index of the parenthesis that closes the one at `start`."""
    depth = 0
    for j in range(start, len(tokens)):
        if tokens[j][1] == "(":
            depth += 1
        elif tokens[j][1] == ")":
            depth -= 1
            if depth == 0:
                return j
    raise ValueError("unbalanced parentheses")
