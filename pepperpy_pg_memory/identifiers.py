"""The one place that turns names into SQL identifiers.

asyncpg has no ``sql.Identifier``: schema and table names are validated against a strict
pattern here and double-quoted by :func:`quote_ident`. No other module splices a name into SQL.
"""

from __future__ import annotations

import re

from .errors import MemoryValidationError

__all__ = [
    "IDENTIFIER_PATTERN",
    "TEXT_SEARCH_CONFIG_PATTERN",
    "check_identifier",
    "quote_ident",
    "quote_name",
    "qualified",
    "name_literal",
]

# 48 leaves room for the suffixes of derived index names within PostgreSQL's 63-byte limit.
IDENTIFIER_PATTERN = re.compile(r"[a-z_][a-z0-9_]{0,47}")
TEXT_SEARCH_CONFIG_PATTERN = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def check_identifier(name: str) -> str:
    """``name`` if it may name a schema or table; else ValueError saying what a name may hold
    (the configuration's check and the CLI's ``--schema``/``--table``)."""
    if not IDENTIFIER_PATTERN.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a plain lower-case identifier "
            f"(letters, digits, underscore; at most 48 characters; not starting with a digit)"
        )
    return name


def quote_ident(name: str) -> str:
    """``name`` double-quoted for SQL, after checking it against :data:`IDENTIFIER_PATTERN`."""
    if not IDENTIFIER_PATTERN.fullmatch(name):
        raise MemoryValidationError(f"{name!r} is not an acceptable SQL identifier")
    return f'"{name}"'


def quote_name(name: str) -> str:
    """Any name (e.g. a database's, which users choose freely) double-quoted, quotes doubled.

    For names that must only be quoted, never validated against our stricter pattern.
    """
    if "\x00" in name:
        raise MemoryValidationError("a SQL name cannot contain NUL")
    return '"' + name.replace('"', '""') + '"'


def qualified(schema: str, name: str) -> str:
    """``"schema"."name"``, both parts validated."""
    return f"{quote_ident(schema)}.{quote_ident(name)}"


def name_literal(name: str) -> str:
    """An identifier, validated, as a SQL string literal (e.g. a table's name compared with a
    registry's ``table_name`` in DDL, where no bind parameter can go)."""
    quote_ident(name)  # the pattern admits no quote and no backslash
    return f"'{name}'"


def text_literal(value: str) -> str:
    """Any text as a SQL string literal, its quotes doubled, for DDL where no bind parameter
    can go (a partial index's predicate). Valid only under ``standard_conforming_strings``
    (PostgreSQL's default), which whoever runs it checks in the same session."""
    if "\x00" in value:
        raise MemoryValidationError("a SQL literal cannot hold a NUL character")
    return "'" + value.replace("'", "''") + "'"
