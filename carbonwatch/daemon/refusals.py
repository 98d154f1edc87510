"""msgspec's validation errors as the daemon's 400s: field first, in plain words.

msgspec says ``Expected `int` <= 2147483647 - at `$.calls[3].pid```; the daemon answers
``calls[3].pid: must be between 1 and 2147483647``. The bounds and choices in the words come from
the request structs themselves (:func:`learn`), so a message cannot quote a stale limit. A dict's
value msgspec reports as ``tags[...]``: the raw body is looked at to name the key (``tags.x``)."""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec
from msgspec import inspect

from carbonwatch.daemon.validation import ApiError, bad

_AT = re.compile(r"^(?P<msg>.*?)(?: - at `(?:(?P<key>key)` in `)?\$(?P<path>[^`]*)`?`)?$", re.S)
_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")
_TYPES = {"str": "a string", "int": "an integer", "float": "a number", "bool": "a boolean",
          "null": "null", "object": "a JSON object", "array": "an array",
          "bytes": "a base64 string"}
# field name -> (lo, hi) of its numbers, or its allowed values; filled by learn()
_RANGES: dict[str, tuple[float, float]] = {}
_CHOICES: dict[str, tuple[Any, ...]] = {}
_UNITS = {"start": "Unix seconds ", "end": "Unix seconds "}


def learn(*structs: type[msgspec.Struct]) -> None:
    """Note every field's numeric bounds and literal choices, for the messages."""
    for info in inspect.multi_type_info(structs):
        _walk(info, set())


def _walk(info: Any, seen: set[type]) -> None:
    if isinstance(info, inspect.StructType):
        if info.cls in seen:
            return
        seen.add(info.cls)
        for f in info.fields:
            for leaf in _leaves(f.type):
                if isinstance(leaf, inspect.IntType | inspect.FloatType):
                    lo = leaf.ge if leaf.ge is not None else leaf.gt
                    hi = leaf.le if leaf.le is not None else leaf.lt
                    if lo is not None and hi is not None:
                        _RANGES[f.name] = (lo, hi)
                elif isinstance(leaf, inspect.LiteralType):
                    _CHOICES[f.name] = tuple(v for v in leaf.values if v != "")
                elif isinstance(leaf, inspect.StructType):
                    _walk(leaf, seen)


def _leaves(info: Any) -> list[Any]:
    """The types a field's values may have, through unions, lists and annotations."""
    if isinstance(info, inspect.Metadata):
        return _leaves(info.type)
    if isinstance(info, inspect.UnionType):
        return [leaf for t in info.types for leaf in _leaves(t)]
    if isinstance(info, inspect.ListType):
        return _leaves(info.item_type)
    return [info]


def _human(types: str) -> str:
    """``int | null`` -> ``an integer or null``."""
    names = [_TYPES.get(t.strip(), t.strip()) for t in types.split("|")]
    return " or ".join(dict.fromkeys(names))


def _between(name: str) -> str:
    lo, hi = _RANGES[name]
    shown = [f"{v:.0f}" if isinstance(v, float) and v.is_integer() else f"{v}" for v in (lo, hi)]
    return f"must be {_UNITS.get(name, '')}between {shown[0]} and {shown[1]}"


def refusal(exc: msgspec.ValidationError, raw: bytes | Any = None) -> ApiError:
    """The 400 for ``exc``; ``raw`` (the body, bytes or parsed) lets a dict's key be named."""
    match = _AT.match(str(exc))
    assert match is not None  # the pattern matches any text
    msg, path = match["msg"], (match["path"] or "").lstrip(".")
    if "[...]" in path:
        path = _name_keys(path, raw)
    if match["key"]:
        return bad(f"{path or 'body'}: a key {_words(msg, '')}", path or None)
    name = _last_name(path)
    missing = re.fullmatch(r"Object missing required field `(.+)`", msg)
    if missing:
        field = missing[1]
        where = f"{path}.{field}" if path else field
        return bad(f"{where}: required{_required_hint(field, path, raw)}", where)
    unknown = re.fullmatch(r"Object contains unknown field `(.+)`", msg)
    if unknown:
        where = f"{path}.{unknown[1]}" if path else unknown[1]
        return bad(f"{path or 'body'}: unknown field {unknown[1]!r}", where)
    tag = re.fullmatch(r"Expected `bool \| int \| float \| str \| null`, got `(\w+)`", msg)
    if tag:  # a tag's value (the one union of five): say it as a rule, not a type list
        return bad(f"{path}: tag values must be strings, numbers, booleans or null, got "
                   f"{_human(tag[1])}", path)
    return bad(f"{path or 'body'}: {_words(msg, name)}", path or None)


def _words(msg: str, name: str) -> str:
    if m := re.fullmatch(r"Expected `(.+)`, got `(.+)`", msg):
        return f"expected {_human(m[1])}, got {_human(m[2])}"
    if m := re.fullmatch(r"Expected `(\w+)` (>=|<=|>|<) (\S+)", msg):
        return _between(name) if name in _RANGES else f"must be {m[2]} {m[3]}"
    if msg == "Number out of range":
        return "number out of range" + (f"; {_between(name)}" if name in _RANGES else "")
    if msg == "Expected `str` of length >= 1":
        return "must not be empty"
    if m := re.fullmatch(r"Expected `str` of length <= (\d+)", msg):
        return f"longer than {m[1]} characters"
    if m := re.fullmatch(r"Expected `(array|object)` of length <= (\d+)", msg):
        return f"more than {m[2]} {'items' if m[1] == 'array' else 'entries'}; at most {m[2]}"
    if m := re.fullmatch(r"Expected `(array|object)` of length >= (\d+)", msg):
        return f"must hold at least {m[2]} {'item(s)' if m[1] == 'array' else 'entry(ies)'}"
    if msg == "Expected `str` matching regex '\\\\S'":
        return "must not be empty or blank"
    if (m := re.fullmatch(r"Invalid enum value (.+)", msg, re.S)) and name in _CHOICES:
        return f"must be one of {', '.join(map(str, _CHOICES[name]))}, got {m[1][:80]}"
    return msg[:1].lower() + msg[1:]


def _last_name(path: str) -> str:
    """``calls[3].tokens_in`` -> ``tokens_in``; ``models[0].start[2]`` -> ``start``."""
    names = [m[1] for m in _SEGMENT.finditer("." + path) if m[1]]
    return names[-1] if names else ""


def _navigate(raw: Any, path: str) -> Any:
    """The value at ``path`` in the raw body, or None where it cannot be followed."""
    if isinstance(raw, bytes | bytearray):
        try:
            raw = json.loads(raw)
        except (ValueError, RecursionError):
            return None
    for m in _SEGMENT.finditer("." + path):
        if m[1] is not None:
            raw = raw.get(m[1]) if isinstance(raw, dict) else None
        else:
            i = int(m[2])
            raw = raw[i] if isinstance(raw, list) and i < len(raw) else None
    return raw


def _name_keys(path: str, raw: Any) -> str:
    """``calls[0].tags[...]`` -> ``calls[0].tags.x``: the first key whose value is refused."""
    head, _, tail = path.partition("[...]")
    mapping = _navigate(raw, head)
    strings_only = _last_name(head) == "env"  # env: str -> str; tags: str -> scalar
    if isinstance(mapping, dict):
        for key, value in mapping.items():
            if not (isinstance(value, str) if strings_only else _scalar_ok(value)):
                return f"{head}.{key}{tail}"
    return f"{head}{tail}"


def _scalar_ok(value: Any) -> bool:
    """A tag value as ``bodies.TagValue`` admits it (only to find the key to name)."""
    if isinstance(value, str):
        return len(value) <= 1024
    if isinstance(value, int) and not isinstance(value, bool):
        return -(2**63) <= value < 2**63
    return value is None or isinstance(value, bool) or (
        isinstance(value, float) and value - value == 0.0)


def _required_hint(field: str, path: str, raw: Any) -> str:
    if field != "model" or not path.startswith("calls["):
        return f", one of {', '.join(_CHOICES[field])}" if field in _CHOICES else ""
    call = _navigate(raw, path)
    given = [t for t in ("tokens_in", "tokens_out") if isinstance(call, dict) and t in call]
    # per-token figures are per model: tokens without one could never be counted
    return f" with {' and '.join(given)} (tokens are counted per model)" if given else ""
