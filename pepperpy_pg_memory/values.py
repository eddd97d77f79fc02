"""Checking what callers hand us before anything reaches the database.

Keys, values and metadata are validated here so that a bad input fails with a
:class:`~pepperpy_pg_memory.MemoryValidationError` naming the problem and nothing is written.
Text containing NUL (``\\x00``) is rejected, not stripped: PostgreSQL cannot store it in
``text`` or ``jsonb``, and silently changing a memory would be worse than refusing it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

import orjson
from pydantic import BaseModel

from .errors import MemoryValidationError

__all__ = [
    "validate_key",
    "check_bytes",
    "check_visible",
    "INVISIBLE",
    "UNSEEN",
    "CONTROL_OR_SURROGATE",
    "to_json_value",
    "default_text_of",
    "encode_json",
    "encode_checked_json",
    "EncodedJSON",
    "decode_json",
]

_MAX_DEPTH = 64
_EXPONENT_FLOATS = 1e16  # from here on, repr(float) uses an exponent


def validate_key(key: Any, max_bytes: int) -> str:
    """The key as a string, or an error saying why it cannot be one."""
    if not isinstance(key, str):
        raise MemoryValidationError(f"memory keys must be strings, got {type(key).__name__}")
    if not key:
        raise MemoryValidationError("memory key is empty")
    found = CONTROL_OR_SURROGATE.search(key)
    if found is not None:
        raise MemoryValidationError(
            f"memory key contains the control or surrogate character U+{ord(found.group()):04X}"
        )
    check_bytes(key, max_bytes, "memory key")
    return key


# Unicode categories Cc (C0, DEL, C1) and Cs (surrogates), as one pattern: a key is checked on
# every read and write, and a character loop cost more than the lookup it guards.
CONTROL_OR_SURROGATE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


# Characters that render as nothing or reorder what follows them (zero-width and bidirectional
# controls): a name holding one looks identical to another name. The zero-width joiner is left
# out, as emoji sequences need it.
_INVISIBLE_CHARACTERS = (
    "\u00ad\u061c\u180e\u200b\u200c\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff"
)
INVISIBLE = re.compile(f"[{_INVISIBLE_CHARACTERS}]")
UNSEEN = re.compile(f"[\x00-\x1f\x7f-\x9f{_INVISIBLE_CHARACTERS}]")
"""Control characters (C0, DEL, C1) and the invisible ones: what a name shown to a person or
kept in a key must spell out."""


def check_visible(text: str, what: str) -> None:
    """Refuse a name (a key, a scope id) with an invisible or bidirectional control character:
    it would pass for another name wherever names are shown."""
    found = INVISIBLE.search(text)
    if found is not None:
        raise MemoryValidationError(
            f"{what} contains the invisible or bidirectional control character "
            f"U+{ord(found.group()):04X}"
        )


def check_bytes(text: str, max_bytes: int, what: str) -> None:
    """Refuse ``text`` longer than ``max_bytes`` in UTF-8 (how PostgreSQL stores and indexes
    it: a limit in characters would let 4-byte characters through four times over)."""
    # Every character takes at least one byte: the encoding is needed only near the limit.
    if len(text) * 4 > max_bytes and (size := len(text.encode("utf-8"))) > max_bytes:
        raise MemoryValidationError(
            f"{what} is {size:,} bytes in UTF-8; the limit is {max_bytes:,} bytes"
        )


def to_json_value(value: Any, what: str = "value") -> Any:
    """``value`` as plain JSON data (pydantic models dumped), checked for what PostgreSQL
    refuses."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return _check(value, what, 0)


def _check(value: Any, where: str, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise MemoryValidationError(f"{where} nests deeper than {_MAX_DEPTH} levels")
    if value is None or isinstance(value, bool) or isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise MemoryValidationError(f"{where} holds {value}, which JSON cannot represent")
        if abs(value) >= _EXPONENT_FLOATS:
            # Python writes these as 1e+16...; jsonb keeps only the written digits and reads
            # back 10000000000000000 -- for 1.7976931348623157e+308 not the same number. These
            # floats are whole numbers, so the exact int goes instead: equal value, exact.
            return int(value)
        return value
    if isinstance(value, str):
        _check_text(value, where)
        return value
    if isinstance(value, BaseModel):
        return _check(value.model_dump(mode="json"), where, depth + 1)
    if isinstance(value, Mapping):
        result: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise MemoryValidationError(
                    f"{where} has the non-string key {key!r}; JSON object keys are strings"
                )
            _check_text(key, f"a key of {where}")
            result[key] = _check(item, f"{where}[{key!r}]", depth + 1)
        return result
    if isinstance(value, (list, tuple)):
        return [_check(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)]
    raise MemoryValidationError(
        f"{where} is a {type(value).__name__}, which is not JSON-serialisable "
        "(use dict, list, str, number, bool, None or a pydantic model)"
    )


def _check_text(text: str, where: str) -> None:
    if "\x00" in text:
        raise MemoryValidationError(
            f"{where} contains a NUL character (\\x00), which PostgreSQL cannot store"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MemoryValidationError(
            f"{where} is not valid Unicode text (lone surrogate at position {exc.start})"
        ) from None


class EncodedJSON(str):
    """JSON text already encoded (and measured): the jsonb codec sends it as it is."""


def encode_json(value: Any) -> str:
    """Compact JSON text of already-checked data."""
    if isinstance(value, EncodedJSON):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def encode_checked_json(value: Any) -> EncodedJSON:
    """:func:`encode_json` of what :func:`to_json_value` returned, in a tenth of the time (a
    bulk load encodes thousands): orjson, which refuses integers beyond 64 bits (the json
    module then writes them) and writes a NaN as null (``to_json_value`` refused those). Its
    small floats read ``1e-7`` where Python's read ``1e-07``: jsonb keeps the same number."""
    try:
        return EncodedJSON(orjson.dumps(value).decode())
    except orjson.JSONEncodeError:
        return EncodedJSON(encode_json(value))


def default_text_of(value: Any) -> str:
    """The text a memory is indexed by, unless the storage is given its own ``text_of``.

    * a string is its own text;
    * a mapping with a string ``"content"`` is indexed by that;
    * anything else by its string leaves (mapping values and list items, depth first), one per
      line, or, if it has none, by its compact JSON.

    A pydantic model is treated as its JSON dump.
    """
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return str(value["content"])
    leaves: list[str] = []
    _string_leaves(value, leaves)
    return "\n".join(leaves) if leaves else encode_json(value)


def _string_leaves(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, Mapping):
        for item in value.values():
            _string_leaves(item, out)
    elif isinstance(value, list):
        for item in value:
            _string_leaves(item, out)


_BIG_INTEGER = re.compile(rb"\d{19,}")
_DIGITS = b"0123456789"


def decode_json(data: bytes) -> Any:
    """JSON text (as PostgreSQL sends jsonb) to Python data, losing nothing.

    orjson is five times faster than the json module but reads an integer beyond 64 bits as
    a float; a document with a run of 19 digits or more (such an integer, or a long number
    inside a string) is read by the json module instead, which keeps every digit.
    """
    # The regex scans at ~10 ns a byte, fifteen times orjson's whole parse of a 700-byte
    # document; only a document holding 19 digits in all can hold such a run, and counting
    # them (bytes.translate, a C loop) costs about what the parse does.
    if len(data) - len(data.translate(None, _DIGITS)) >= 19 and _BIG_INTEGER.search(data):
        return json.loads(data)
    return orjson.loads(data)
