"""The metadata filter language, compiled to a SQL condition whose values are all parameters.

A filter is a mapping from metadata keys to conditions, in the style of MongoDB::

    {"topic": "billing"}                          # equality
    {"priority": {"$gte": 2, "$lt": 5}}           # numeric range (numbers compared as numbers)
    {"due": {"$lt": "2026-12-01"}}                # text range (by code point: ISO dates sort)
    {"lang": {"$in": ["en", "pt"]}}               # membership ($nin: the opposite)
    {"tags": {"$contains": "urgent"}}             # a list that holds a value
    {"reviewed": {"$exists": False}}              # key absent
    {"title": {"$itext": "refund"}}               # a string holding this text ($text: case too)
    {"tags": {"$empty": True}}                    # absent, null, "", [] or {}
    {"$or": [{"topic": "billing"}, {"$not": {"lang": "en"}}]}

Operators: ``$eq $ne $gt $gte $lt $lte $in $nin $contains $exists $text $itext $empty`` on a
key, and
``$and $or $not`` to combine. A key is a name of letters, digits, ``_`` and ``-``; dots step into
nested objects (``"user.plan"``). Keys travel as ``text[]`` parameters and values as ``jsonb`` or
``numeric`` parameters: nothing from a filter is ever spliced into the SQL text. Anything
outside this grammar raises :class:`~pepperpy_pg_memory.MemoryValidationError`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Literal

from .errors import MemoryValidationError

__all__ = [
    "Params",
    "compile_filter",
    "key_path",
    "typed_field",
    "field_type",
    "IndexedFields",
    "FieldKind",
    "MAX_FILTER_DEPTH",
]

FieldKind = Literal["numeric", "text"]
IndexedFields = Mapping[tuple[str, ...], FieldKind]
"""Metadata paths with an expression index (``PostgresConfig.indexed_metadata``), by kind."""

MAX_FILTER_DEPTH = 8
MAX_FILTER_CONDITIONS = 200
MAX_IN_VALUES = 1_000
_KEY_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]{0,63}")
_MAX_KEY_SEGMENTS = 8

_RANGE_OPERATORS = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_FIELD_OPERATORS = {
    "$eq",
    "$ne",
    "$in",
    "$nin",
    "$contains",
    "$exists",
    "$text",
    "$itext",
    "$empty",
    *_RANGE_OPERATORS,
}
_LOGICAL_OPERATORS = {"$and", "$or", "$not"}


class Params:
    """Collects bind parameters and hands out their ``$n`` placeholders."""

    def __init__(self, initial: list[Any] | None = None) -> None:
        self.values: list[Any] = list(initial or [])

    def add(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def typed_field(column: str, path: list[str] | tuple[str, ...], kind: FieldKind) -> str:
    """The value at ``path`` of the jsonb ``column`` when it is a number (``numeric``) or a
    string (``text``, compared by code point), else NULL: the expression an index on a
    metadata field is built on, and the one range filters on that field compile to.

    The path is spelt out in the SQL text (an index expression must match literally): its
    segments passed :func:`key_path`, which admits letters, digits, ``_`` and ``-`` only.
    """
    literal = _path_literal(path)
    if kind == "numeric":
        return (
            f"(CASE WHEN jsonb_typeof({column} #> {literal}) = 'number' "
            f"THEN ({column} #>> {literal})::numeric END)"
        )
    return (
        f"((CASE WHEN jsonb_typeof({column} #> {literal}) = 'string' "
        f'THEN {column} #>> {literal} END) COLLATE "C")'
    )


def _path_literal(path: list[str] | tuple[str, ...]) -> str:
    segments = [segment for part in path for segment in key_path(part)]
    return "'{" + ",".join(segments) + "}'"


def field_type(column: str, path: list[str] | tuple[str, ...]) -> str:
    """The JSON type of the value at ``path`` (NULL when absent), spelt as range filters on an
    indexed field test it; the store keeps statistics on it, so that the planner knows most
    values have the expected type (it would guess 0.5% and pick the wrong plan)."""
    return f"jsonb_typeof({column} #> {_path_literal(path)})"


def _typed_test(column: str, path: list[str], kind: FieldKind, operator: str, bound: str) -> str:
    """A range test in the form the field's expression index serves, with the three-valued
    meaning of the unindexed form: a missing key is unknown, a value of another type fails."""
    json_type = "number" if kind == "numeric" else "string"
    return (
        f"({field_type(column, path)} = '{json_type}' AND "
        f"{typed_field(column, path, kind)} {operator} {bound})"
    )


class _Compiler:
    def __init__(self, params: Params, column: str, indexed: IndexedFields | None) -> None:
        self.params = params
        self.column = column
        self.indexed = indexed or {}
        self.conditions = 0

    def document(self, spec: Any, depth: int) -> str:
        if depth > MAX_FILTER_DEPTH:
            raise MemoryValidationError(f"filter nests deeper than {MAX_FILTER_DEPTH} levels")
        if not isinstance(spec, Mapping):
            raise MemoryValidationError(
                f"a filter must be a mapping of keys to conditions, got {type(spec).__name__}"
            )
        parts: list[str] = []
        for key, condition in spec.items():
            if not isinstance(key, str):
                raise MemoryValidationError(f"filter keys must be strings, got {key!r}")
            if key in _LOGICAL_OPERATORS:
                parts.append(self.logical(key, condition, depth))
            elif key.startswith("$"):
                raise MemoryValidationError(
                    f"unknown filter operator {key!r} at the top of a filter "
                    f"(use one of {sorted(_LOGICAL_OPERATORS)})"
                )
            else:
                parts.append(self.field(key, condition))
        if not parts:
            return "TRUE"
        return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"

    def logical(self, operator: str, operand: Any, depth: int) -> str:
        if operator == "$not":
            return f"(NOT {self.document(operand, depth + 1)})"
        if not isinstance(operand, list) or not operand:
            raise MemoryValidationError(f"{operator} takes a non-empty list of filters")
        joiner = " AND " if operator == "$and" else " OR "
        return "(" + joiner.join(self.document(item, depth + 1) for item in operand) + ")"

    def field(self, key: str, condition: Any) -> str:
        path = key_path(key)
        if isinstance(condition, Mapping) and any(
            isinstance(op, str) and op.startswith("$") for op in condition
        ):
            if not condition:
                raise MemoryValidationError(f"empty condition for {key!r}")
            parts = [self.operator(path, key, op, operand) for op, operand in condition.items()]
            return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"
        return self.operator(path, key, "$eq", condition)

    def operator(self, path: list[str], key: str, operator: Any, operand: Any) -> str:
        self.conditions += 1
        if self.conditions > MAX_FILTER_CONDITIONS:
            raise MemoryValidationError(f"filter has more than {MAX_FILTER_CONDITIONS} conditions")
        if operator not in _FIELD_OPERATORS:
            raise MemoryValidationError(
                f"unknown filter operator {operator!r} for {key!r} "
                f"(use one of {sorted(_FIELD_OPERATORS)})"
            )
        column = self.column
        if operator == "$eq":
            return self.equals(path, key, operand)
        if operator == "$ne":
            return f"(NOT {self.equals(path, key, operand)})"
        if operator in ("$in", "$nin"):
            if not isinstance(operand, list) or not operand:
                raise MemoryValidationError(f"{operator} for {key!r} takes a non-empty list")
            if len(operand) > MAX_IN_VALUES:
                raise MemoryValidationError(f"{operator} takes at most {MAX_IN_VALUES} values")
            documents = [_nest(path, _json_scalar(key, operator, item)) for item in operand]
            # jsonb @> ANY(...) lets the GIN (jsonb_path_ops) index serve membership tests.
            test = f"({column} @> ANY({self.params.add(documents)}::jsonb[]))"
            return test if operator == "$in" else f"(NOT {test})"
        if operator == "$contains":
            item = _json_value(key, operator, operand)
            return f"({column} @> {self.params.add(_nest(path, [item]))}::jsonb)"
        if operator == "$exists":
            if not isinstance(operand, bool):
                raise MemoryValidationError(f"$exists for {key!r} takes true or false")
            test = f"({column} #> {self.params.add(path)}::text[]) IS NOT NULL"
            return f"({test})" if operand else f"(NOT {test})"
        if operator in ("$text", "$itext"):
            if not isinstance(operand, str) or not operand:
                raise MemoryValidationError(f"{operator} for {key!r} takes a non-empty string")
            extracted = f"({column} #> {self.params.add(path)}::text[])"
            text = f"({extracted} #>> '{{}}')"
            needle = self.params.add(_json_value(key, operator, operand))
            if operator == "$itext":
                text, needle = f"lower({text})", f"lower({needle}::text)"
            # strpos, not LIKE: the operand's % and _ are text, not patterns.
            return f"(jsonb_typeof({extracted}) = 'string' AND strpos({text}, {needle}) > 0)"
        if operator == "$empty":
            if not isinstance(operand, bool):
                raise MemoryValidationError(f"$empty for {key!r} takes true or false")
            extracted = f"({column} #> {self.params.add(path)}::text[])"
            test = f"coalesce({extracted} IN ('null', '\"\"', '[]', '{{}}'), true)"
            return f"({test})" if operand else f"(NOT {test})"
        # Range: a number bound compares numbers as numbers, and only values that are numbers,
        # so that "9" never sorts above "10" and a string never satisfies a numeric bound. A
        # string bound compares strings by code point (ISO dates sort as dates), the same on
        # every server whatever its collation.
        kind = self.indexed.get(tuple(path))
        if isinstance(operand, str) and kind == "text":
            text = _json_value(key, operator, operand)
            bound = f"{self.params.add(text)}::text"
            return _typed_test(self.column, path, "text", _RANGE_OPERATORS[operator], bound)
        if isinstance(operand, str):
            text = _json_value(key, operator, operand)
            extracted = f"({column} #> {self.params.add(path)}::text[])"
            return (
                f"(jsonb_typeof({extracted}) = 'string' AND "
                f"({extracted} #>> '{{}}') COLLATE \"C\" {_RANGE_OPERATORS[operator]} "
                f"{self.params.add(text)}::text)"
            )
        if isinstance(operand, bool) or not isinstance(operand, (int, float)):
            raise MemoryValidationError(
                f"{operator} for {key!r} takes a number or a string, got {type(operand).__name__}"
            )
        if not math.isfinite(operand):
            raise MemoryValidationError(f"{operator} for {key!r} takes a finite number")
        if kind == "numeric":
            # The same test, in the form the field's expression index serves.
            bound = self.params.add(float(operand) if isinstance(operand, float) else operand)
            return _typed_test(
                self.column, path, "numeric", _RANGE_OPERATORS[operator], f"{bound}::numeric"
            )
        extracted = f"({column} #> {self.params.add(path)}::text[])"
        bound = self.params.add(float(operand) if isinstance(operand, float) else operand)
        return (
            f"(jsonb_typeof({extracted}) = 'number' AND "
            f"{extracted} {_RANGE_OPERATORS[operator]} to_jsonb({bound}::numeric))"
        )

    def equals(self, path: list[str], key: str, operand: Any) -> str:
        value = _json_value(key, "$eq", operand)
        if isinstance(value, (list, dict)):
            # Containment would accept a superset; structured values need exact equality.
            extracted = f"({self.column} #> {self.params.add(path)}::text[])"
            return f"({extracted} = {self.params.add(value)}::jsonb)"
        return f"({self.column} @> {self.params.add(_nest(path, value))}::jsonb)"


def key_path(key: str) -> list[str]:
    """A filter key (``a.b``) as its path of segments, or an error saying why it is invalid."""
    segments = key.split(".")
    if len(segments) > _MAX_KEY_SEGMENTS or not all(_KEY_SEGMENT.fullmatch(s) for s in segments):
        raise MemoryValidationError(
            f"invalid filter key {key!r}: use letters, digits, '_' and '-', "
            f"with '.' between nested keys"
        )
    return segments


def _nest(path: list[str], value: Any) -> Any:
    for segment in reversed(path):
        value = {segment: value}
    return value


def _json_scalar(key: str, operator: str, value: Any) -> Any:
    if isinstance(value, (list, dict)):
        raise MemoryValidationError(f"{operator} for {key!r} takes scalar values")
    return _json_value(key, operator, value)


def _json_value(key: str, operator: str, value: Any) -> Any:
    if value is None or isinstance(value, (str, bool, int)):
        if isinstance(value, str) and "\x00" in value:
            raise MemoryValidationError(f"{operator} for {key!r}: text may not contain NUL")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise MemoryValidationError(f"{operator} for {key!r} takes a finite number")
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(key, operator, item) for item in value]
    if isinstance(value, Mapping):
        return {str(k): _json_value(key, operator, v) for k, v in value.items()}
    raise MemoryValidationError(
        f"{operator} for {key!r}: {type(value).__name__} is not a JSON value"
    )


def compile_filter(
    spec: Mapping[str, Any] | None,
    params: Params,
    column: str = "metadata",
    indexed: IndexedFields | None = None,
) -> str:
    """SQL condition for ``spec`` over the jsonb ``column``; values are added to ``params``.

    ``column`` is always one of this package's own column expressions, never user input.
    Range conditions on ``indexed`` paths compile to :func:`typed_field` (same meaning, in the
    form their expression index serves).
    """
    if spec is None:
        return "TRUE"
    return _Compiler(params, column, indexed).document(spec, depth=1)
