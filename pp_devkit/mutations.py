"""Input mutations for fuzzing, generic (they know JSON and YAML, not the service): hypothesis strategies.

* ``mutate_bytes``: one to six byte-level edits: a bit flipped, a token inserted (``1e999``, ``NaN``, a
  5,000-digit number, invalid UTF-8, an escaped lone surrogate, YAML anchors and tags) or random bytes, a
  span deleted or duplicated, nesting 100,000 deep (600 for YAML), truncation. ``mutate_text`` does the same
  to text, invalid bytes coming back as lone surrogates.
* ``mutate_tree``: one to three structure-aware edits of a JSON-like document: a field dropped, renamed or
  added, or a value replaced by an odd one (wrong type, huge number, odd unicode, deep nesting written
  verbatim through ``Raw``), by another field's, or by one of its own type at an edge (``tweak``).
* ``document_cases``: valid documents, both kinds of mutation and their combination, wrong top-level types
  and bytes that are no document at all, serialised by ``dumps_json`` or ``dumps_yaml``.

Deterministic given hypothesis' draws, so a failing case shrinks and replays. ``pp_devkit.fuzzing`` seeds them
with the service's inputs.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import yaml  # type: ignore[import-untyped]
from hypothesis import strategies as st

TreePath = tuple[str | int, ...]


@dataclass(frozen=True)
class Raw:
    """Text written verbatim where a value goes: deep nesting, a 5,000-digit number, ``NaN``."""

    text: str


DEEP_JSON, DEEP_YAML = 100_000, 600
RAW_JSON = (Raw("[" * DEEP_JSON + "]" * DEEP_JSON), Raw('{"a":' * 5_000 + "1" + "}" * 5_000), Raw("9" * 5_000),
            Raw("-1e999"), Raw("NaN"), Raw("1e-400"))  # fmt: skip
RAW_YAML = (Raw("[" * DEEP_YAML + "]" * DEEP_YAML), Raw("- " * DEEP_YAML + "x"), Raw("9" * 5_000), Raw(".nan"),
            Raw("-.inf"), Raw("*nowhere"), Raw("&a [*a]"), Raw("!!python/object/apply:os.getcwd []"),
            Raw("!!binary AAEC"), Raw("!!set {a, b}"), Raw("2001-12-14"), Raw("1:30"), Raw("0x1F"), Raw("yes"),
            Raw("~"), Raw("{? [a, b] : c}"))  # fmt: skip
ODD_TEXTS = ("", " ", "\ud800", "\x00", "../../etc/passwd", "é", "\U0001d518\U0001d52b\U0001d526", "\u202e",
             "\u0661\u0662\u0663", "1", "1.5", "NaN", "a" * 300)  # fmt: skip
ODD_VALUES: st.SearchStrategy[Any] = st.one_of(
    st.none(), st.booleans(), st.integers(), st.sampled_from([2**63, -(2**63) - 1, 10**30, 10**400, -1, 0]),
    st.floats(), st.text(max_size=24), st.sampled_from(ODD_TEXTS), st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)  # fmt: skip
EDGE_INTS = (0, -1, 1, 2**31, -(2**31) - 1, 2**63, 10**30, 10**400)
EDGE_FLOATS = (0.0, -0.0, 1e300, -1e300, 1.7976931348623157e308, 5e-324, 2.0**53 + 1, 0.1, -12 * 3600.0)


def tweak(value: Any) -> st.SearchStrategy[Any]:
    """A value of the same JSON type as ``value`` at an edge: huge, tiny, negative, empty, odd unicode."""
    if isinstance(value, bool):
        return st.just(not value)
    if isinstance(value, int):
        return st.sampled_from(EDGE_INTS) | st.integers()
    if isinstance(value, float):
        return st.sampled_from(EDGE_FLOATS) | st.floats()
    if isinstance(value, str):
        return st.sampled_from(ODD_TEXTS) | st.text(max_size=24) | mutate_text(value)
    return st.sampled_from(([], {}))


TOKENS = (b'"', b"\\", b"{", b"}", b"[", b"]", b",", b":", b"\x00", b"\xff", b"\xc3", b"\xed\xa0\x80", b"1e999",
          b"NaN", b"Infinity", b"-0", b"9" * 30, b"9" * 5_000, b"null", b"true", b"\\ud800", "é".encode(),
          "\u202e".encode(), "\u0663".encode(), b"\n", b"%", b"+", b"..", b"- ", b"&a ", b"*a", b"!!", b"? ",
          b"|")  # fmt: skip
NESTING = ((b"[", b"]"), (b'{"a":', b"}"), (b"- ", b""), (b"{a: ", b"}"))


@st.composite
def mutate_bytes(draw: st.DrawFn, seed: bytes, deep: int = DEEP_JSON) -> bytes:
    """``seed`` after one to six byte-level edits at drawn positions; ``deep``: the deepest nesting inserted
    (a JSON decoder gives up at once, a YAML one only after a slow scan: less for YAML)."""
    data = seed
    for _ in range(draw(st.integers(1, 6))):
        data = _byte_edit(draw, data, draw(st.integers(0, len(data))), deep)
    return data


def _byte_edit(draw: st.DrawFn, data: bytes, at: int, deep: int) -> bytes:
    """At ``at``: flip a bit, insert a token or random bytes, delete, duplicate, nest deeply, or truncate."""
    edit = draw(st.sampled_from(("flip", "insert", "delete", "duplicate", "nest", "truncate")))
    if edit == "flip" and data:
        i = min(at, len(data) - 1)
        return data[:i] + bytes([data[i] ^ (1 << draw(st.integers(0, 7)))]) + data[i + 1 :]
    if edit == "insert":
        return data[:at] + draw(st.sampled_from(TOKENS) | st.binary(min_size=1, max_size=8)) + data[at:]
    if edit == "delete":
        return data[:at] + data[at + draw(st.integers(1, 16)) :]
    if edit == "duplicate":
        return data[: at + draw(st.integers(1, 64))] + data[at:]
    if edit == "nest":
        (opening, closing), depth = draw(st.sampled_from(NESTING)), draw(st.sampled_from((64, deep)))
        return data[:at] + opening * depth + closing * depth + data[at:]
    return data[:at]


def mutate_text(seed: str) -> st.SearchStrategy[str]:
    """``seed`` after byte-level edits, read back as text (invalid bytes become lone surrogates)."""
    return mutate_bytes(seed.encode("utf-8", "surrogatepass")).map(lambda b: b.decode("utf-8", "surrogateescape"))


def paths(node: Any, prefix: TreePath = ()) -> Iterator[TreePath]:
    """Every node of a JSON-like tree, the root first."""
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from paths(value, (*prefix, index))


def _at(doc: Any, path: TreePath) -> Any:
    for step in path:
        doc = doc[step]
    return doc


def _edit_tree(draw: st.DrawFn, doc: Any, path: TreePath, raws: Sequence[Raw]) -> Any:
    """One structure-aware edit at ``path``: drop, rename or add a field, or replace the value (by an odd one,
    another field's, or one of the same type at an edge)."""
    action = draw(st.sampled_from(("drop", "rename", "add", "replace", "swap", "tweak", "tweak")))
    parent, key = (_at(doc, path[:-1]), path[-1]) if path else (None, None)
    if action == "swap":  # another node's value here: right syntax, wrong meaning
        value = copy.deepcopy(_at(doc, draw(st.sampled_from(list(paths(doc))))))
    elif action == "tweak":  # the same type, at an edge: what a strict type check lets through
        value = draw(tweak(_at(doc, path)))
    else:
        value = draw(ODD_VALUES | st.sampled_from(raws))
    if parent is None:
        return value
    if action == "drop":
        del parent[key]
    elif action == "rename" and isinstance(parent, dict):
        parent[draw(st.sampled_from((str(key).lower(), f"{key} ", f"_{key}", str(key).upper())))] = parent.pop(key)
    elif action == "add" and isinstance(parent, dict):
        parent[draw(st.text(max_size=8))] = value
    else:
        parent[key] = value
    return doc


@st.composite
def mutate_tree(draw: st.DrawFn, seed: Any, focus: Sequence[TreePath] = (), raws: Sequence[Raw] = RAW_JSON) -> Any:
    """A deep copy of ``seed`` after one to three ``_edit_tree`` edits; half of them at a ``focus`` path."""
    doc = copy.deepcopy(seed)
    for _ in range(draw(st.integers(1, 3))):
        every = list(paths(doc))
        aimed = [p for p in focus if p in every]
        at_focus = bool(aimed) and draw(st.booleans())
        path = draw(st.sampled_from(aimed if at_focus else every))
        doc = _edit_tree(draw, doc, path, raws)
    return doc


def _placeholders(doc: Any, found: list[Raw]) -> Any:
    """``doc`` with each ``Raw`` replaced by a unique placeholder string (recorded in ``found``)."""
    if isinstance(doc, Raw):
        found.append(doc)
        return f"RAW{len(found) - 1}PLACEHOLDER"
    if isinstance(doc, dict):
        return {k: _placeholders(v, found) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_placeholders(v, found) for v in doc]
    return doc


def dumps_json(doc: Any, ascii_only: bool = True) -> bytes:
    """``doc`` as JSON bytes (``Raw`` values verbatim); not ``ascii_only``: lone surrogates give invalid UTF-8."""
    found: list[Raw] = []
    text = json.dumps(_placeholders(doc, found), ensure_ascii=ascii_only)
    for index, raw in enumerate(found):
        text = text.replace(f'"RAW{index}PLACEHOLDER"', raw.text)
    return text.encode("utf-8", "surrogatepass")


def dumps_yaml(doc: Any, flow: bool = False) -> bytes:
    """``doc`` as YAML bytes (``Raw`` values verbatim), block or flow style."""
    found: list[Raw] = []
    text = yaml.safe_dump(_placeholders(doc, found), default_flow_style=flow, sort_keys=False, width=1 << 20)
    for index, raw in enumerate(found):
        text = text.replace(f"RAW{index}PLACEHOLDER", raw.text)
    return str(text).encode("utf-8", "surrogatepass")


def document_cases(seeds: Sequence[Any], dumps: Callable[[Any, bool], bytes], focus: Sequence[TreePath] = (),
                   raws: Sequence[Raw] = RAW_JSON, deep: int = DEEP_JSON) -> st.SearchStrategy[bytes]:  # fmt: skip
    """Valid documents, structure-aware and byte-level mutations of them (and both), wrong top-level types,
    and bytes that are not a document at all."""
    seed = st.sampled_from(seeds)
    valid = seed.map(lambda s: dumps(s, False))
    edited = st.builds(dumps, seed.flatmap(lambda s: mutate_tree(s, focus, raws)), st.booleans())
    return st.one_of(valid, edited, valid.flatmap(lambda b: mutate_bytes(b, deep)),
                     edited.flatmap(lambda b: mutate_bytes(b, deep)), st.builds(dumps, ODD_VALUES, st.booleans()),
                     st.binary(max_size=64))  # fmt: skip


