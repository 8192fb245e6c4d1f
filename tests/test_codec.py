"""Every event type round-trips through the codec and through the store; bad rows are errors.

Strategies are derived from each Struct's own field types (``msgspec.inspect``), so a field
added later is generated without touching this file.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import msgspec.inspect as mi
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sp.ledger import codec
from sp.ledger import events as ev
from sp.ledger.errors import CorruptEventError
from sp.ledger.store import EventStore
from sp.ledger.verify import verify

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
# Anything UTF-8 can hold (NUL, controls, astral planes), i.e. all but lone surrogates.
TEXT = st.text(st.characters(codec="utf-8"), max_size=12)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
JSON_VALUES: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | INT64 | FLOATS | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)


def _strategy(t: mi.Type) -> st.SearchStrategy[Any]:
    match t:
        case mi.StrType():
            return TEXT
        case mi.IntType():
            return INT64
        case mi.FloatType():
            return FLOATS
        case mi.BoolType():
            return st.booleans()
        case mi.NoneType():
            return st.none()
        case mi.AnyType():
            return JSON_VALUES
        case mi.UnionType(types=types):
            return st.one_of([_strategy(x) for x in types])
        case mi.ListType(item_type=item):
            return st.lists(_strategy(item), max_size=3)
        case mi.DictType(key_type=key, value_type=value):
            return st.dictionaries(_strategy(key), _strategy(value), max_size=3)
        case mi.StructType(cls=cls, fields=fields):  # a nested Struct (ledger.archived's runs)
            return st.builds(cls, **{f.name: _strategy(f.type) for f in fields})
    raise AssertionError(f"no strategy for field type {t!r}: extend tests/test_codec.py")


_MISSING = object()


def event_strategy(cls: type[ev.Event]) -> st.SearchStrategy[ev.Event]:
    """Instances of ``cls``: required fields always set, optional ones sometimes left default."""
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for f in info.fields:
        value = _strategy(f.type)
        fields[f.name] = value if f.required else st.one_of(st.just(_MISSING), value)

    def build(kwargs: dict[str, Any]) -> ev.Event:
        return cls(**{k: v for k, v in kwargs.items() if v is not _MISSING})

    return st.fixed_dictionaries(fields).map(build)


ANY_EVENT = st.sampled_from(ev.EVENT_TYPES).flatmap(event_strategy)
def _class_name(cls: type) -> str:
    return cls.__name__


BY_NAME = sorted(ev.EVENT_TYPES, key=_class_name)


def test_every_event_type_has_a_distinct_explicit_tag() -> None:
    tags = [ev.tag_of(cls) for cls in ev.EVENT_TYPES]
    assert len(set(tags)) == len(tags) == len(ev.EVENT_TYPES)
    for cls, tag in zip(ev.EVENT_TYPES, tags, strict=True):
        noun, _, verb = tag.partition(".")
        assert noun in {"action", "agent", "control", "schedule", "plan", "trigger", "alert",
                        "maintenance", "ledger", "policy"}
        assert verb and tag != cls.__name__


@pytest.mark.parametrize("cls", BY_NAME, ids=_class_name)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_codec_round_trip(cls: type[ev.Event], data: st.DataObject) -> None:
    event = data.draw(event_strategy(cls))
    text = codec.encode(event)
    decoded = codec.decode(text, seq=7)
    assert type(decoded) is cls
    assert decoded == event
    # Canonical: re-encoding what was decoded gives the very same text (the chain hashes it).
    assert codec.encode(decoded) == text
    assert json.loads(text)["type"] == ev.tag_of(cls)
    # Bytes decode too (rows may come back as either).
    assert codec.decode(text.encode()) == event


@pytest.fixture
def fast_store(tmp_path: Path) -> Any:
    """A real ledger file; NORMAL sync because this test is about bytes, not durability."""
    s = EventStore(tmp_path / "codec.db", synchronous="NORMAL")
    yield s
    s.close()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
# ledger.archived is left out: a random one claims seqs that are still in the log, which
# verify rightly rejects (tests/test_archive.py covers it).
@given(events=st.lists(ANY_EVENT.filter(lambda e: not isinstance(e, ev.LedgerArchived)),
                       min_size=1, max_size=4),
       suffix=st.text(st.characters(codec="utf-8"), max_size=8))
def test_store_round_trip(fast_store: EventStore, events: list[ev.Event], suffix: str) -> None:
    # One store serves every example; a fresh stream keeps examples apart.
    stream = f"{uuid.uuid4().hex}{suffix}"
    before, _ = fast_store.head()
    recorded = fast_store.append(stream, events, expected_version=0)
    assert [r.version for r in recorded] == list(range(1, len(events) + 1))
    assert [r.seq for r in recorded] == list(range(before + 1, before + len(events) + 1))

    back = fast_store.read_stream(stream)
    assert [r.event for r in back] == events
    assert [type(r.event) for r in back] == [type(e) for e in events]
    assert [r.type for r in back] == [ev.tag_of(type(e)) for e in events]
    assert [r.stream for r in back] == [stream] * len(events)
    assert list(fast_store.read_all(after_seq=before)) == back

    # Stored as JSON text that SQLite's own JSON functions understand.
    rows = fast_store.query(
        "SELECT data, json_valid(data), json_extract(data, '$.type'), type FROM events"
        " WHERE seq > ? ORDER BY seq", (before,))
    for (data, valid, tag, type_), event in zip(rows, events, strict=True):
        assert data == codec.encode(event)
        assert valid == 1
        assert tag == type_ == ev.tag_of(type(event))
    # The append path and `sp verify` hash the same bytes, whatever the text holds.
    assert verify(fast_store).ok


# -- malformed rows ------------------------------------------------------------------------------

BAD_ROWS = {
    "unknown type tag": '{"type": "action.exploded", "reason": "x"}',
    "no type tag": '{"reason": "x"}',
    "malformed json": '{"type": "action.rejected", "reason": ',
    "not an object": '["action.rejected"]',
    "wrong field type": '{"type": "action.started", "attempt": "one", "owner": "w", "pid": 1}',
    "missing required field": '{"type": "action.started", "owner": "w", "pid": 1}',
    "null for a str": '{"type": "action.rejected", "reason": null}',
    "empty": "",
}


@pytest.mark.parametrize("data", BAD_ROWS.values(), ids=BAD_ROWS.keys())
def test_decoding_a_bad_row_raises_corrupt_event_naming_the_seq(data: str) -> None:
    with pytest.raises(CorruptEventError) as info:
        codec.decode(data, seq=42)
    assert info.value.seq == 42
    assert str(info.value).startswith("event seq 42 does not decode: ")
    assert info.value.__cause__ is None  # one clean line, no chained driver exception


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    """A newer sp may add fields with defaults; an older reader must still decode the row."""
    event = codec.decode('{"type": "action.rejected", "reason": "x", "added_later": 1}')
    assert event == ev.ActionRejected(reason="x")


@pytest.mark.parametrize("data", [BAD_ROWS["unknown type tag"], BAD_ROWS["wrong field type"]],
                         ids=["unknown type tag", "wrong field type"])
def test_reading_a_corrupt_stored_row_names_its_seq(bare_store: EventStore, db_path: Path,
                                                    data: str) -> None:
    bare_store.append("s", [ev.ActionRejected(reason="fine")], 0)
    # Inserting is not blocked by the append-only triggers: write the bad row as a foreign
    # writer would, with plain sqlite3.
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            "INSERT INTO events (seq, stream, version, type, ts, data, prev_hash, hash)"
            " VALUES (2, 's', 2, 'action.rejected', 0, ?, '', '')", (data,))
    conn.close()
    with pytest.raises(CorruptEventError) as info:
        bare_store.read_stream("s")
    assert info.value.seq == 2
    with pytest.raises(CorruptEventError, match=r"^event seq 2 does not decode: "):
        list(bare_store.read_all())
    # The good row before it still reads.
    assert next(iter(bare_store.read_all())).event == ev.ActionRejected(reason="fine")


def test_encoding_is_deterministic() -> None:
    """Same event, same text, whatever order the keywords were given in."""
    a = ev.ActionStarted(by="w", attempt=1, owner="w", pid=7, host="h")
    b = ev.ActionStarted(host="h", pid=7, owner="w", attempt=1, by="w")
    assert codec.encode(a) == codec.encode(b) == codec.encode(a)
    assert json.loads(codec.encode(a)) == {
        "type": "action.started", "by": "w", "attempt": 1, "owner": "w", "pid": 7, "host": "h",
    }  # defaults are omitted: stored rows stay small, and decoding fills them in
