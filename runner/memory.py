"""Per-agent memory that persists across runs: the seed's ``context.memory``.

A small key/value store (``memory["threshold"] = 80``, ``memory.get("threshold")``) plus a
bounded list of readings (``memory.record_reading(x)``, ``memory.recent_readings``), kept in the
ledger file in two side tables (their DDL in :mod:`sp.ledger.schema`, reached through
:mod:`sp.ledger.side`):

* ``agent_memory(agent, key, value JSON, updated_ms)``
* ``agent_readings(id, agent, ts_ms, value JSON)``: the newest :data:`MAX_READINGS` per agent
  (or the ``max_readings`` a continuous entry's settings give)

Memory is what an agent's code chooses to remember, not a fact about what happened: it is
**not** an event, ``sp replay`` neither needs nor rebuilds it, and ``sp verify`` does not cover
it. Values are JSON (msgspec builtins); a dataclass, Struct or plain object is stored as its
fields and read back as a dict.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping, Sequence
from typing import Any, overload

import msgspec

from sp.ledger import side
from sp.ledger.errors import UsageError
from sp.ledger.interface import Ledger

MAX_READINGS = 10_000


def _enc_hook(obj: Any) -> Any:
    fields = getattr(obj, "__dict__", None)
    if isinstance(fields, dict):
        return {k: v for k, v in fields.items() if not k.startswith("_")}
    raise NotImplementedError(type(obj))


def encode(value: Any) -> str:
    """:raises UsageError: not representable as JSON."""
    try:
        return msgspec.json.encode(value, enc_hook=_enc_hook).decode()
    except (TypeError, NotImplementedError, msgspec.EncodeError) as e:
        raise UsageError(f"memory: cannot store {type(value).__name__} as JSON: {e}") from None


def _decode(text: str) -> Any:
    return msgspec.json.decode(text)


class AgentMemory(MutableMapping[str, Any]):
    """One agent's memory. ``store_of`` gives the ledger connection to use (the calling
    thread's); every write is one transaction of its own."""

    def __init__(self, store_of: Callable[[], Ledger], agent: str,
                 max_readings: int = MAX_READINGS,
                 close: Callable[[], None] | None = None) -> None:
        if max_readings < 1:
            raise UsageError("memory: max_readings must be at least 1")
        self.agent = agent
        self.max_readings = max_readings
        self._store_of = store_of
        self._close = close

    def close(self) -> None:
        """Close the ledger connection this memory opened itself (if any)."""
        if self._close is not None:
            self._close()
            self._close = None

    def __enter__(self) -> AgentMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _store(self) -> Ledger:
        # The tables exist: opening the store applied the ledger's migrations.
        return self._store_of()

    # -- key/value -------------------------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        text = side.memory_get(self._store(), self.agent, key)
        if text is None:
            raise KeyError(key)
        return _decode(text)

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(key, str):
            raise UsageError(f"memory: keys are strings, got {key!r}")
        text = encode(value)
        store = self._store()
        with store.transaction() as tx:
            side.memory_put(tx, self.agent, key, text, store.clock.now_ms())

    def __delitem__(self, key: str) -> None:
        with self._store().transaction() as tx:
            if not side.memory_delete(tx, self.agent, key):
                raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(side.memory_keys(self._store(), self.agent))

    def __len__(self) -> int:
        return side.memory_count(self._store(), self.agent)

    def __repr__(self) -> str:
        return f"AgentMemory({self.agent!r})"

    # -- readings --------------------------------------------------------------------------
    def record_reading(self, value: Any) -> None:
        """Append a reading; only the newest ``max_readings`` are kept."""
        text = encode(value)
        store = self._store()
        with store.transaction() as tx:
            side.reading_add(tx, self.agent, store.clock.now_ms(), text, self.max_readings)

    @property
    def recent_readings(self) -> RecentReadings:
        """The kept readings, oldest first (a lazy sequence: ``len()`` counts in SQL)."""
        return RecentReadings(self)

    def clear_readings(self) -> int:
        """Forget every reading (e.g. once they were compressed elsewhere); returns how many."""
        with self._store().transaction() as tx:
            return side.readings_clear(tx, self.agent)


class RecentReadings(Sequence[Any]):
    """An agent's readings, oldest first, read from the side table on demand."""

    def __init__(self, memory: AgentMemory) -> None:
        self._memory = memory

    def __len__(self) -> int:
        return side.readings_count(self._memory._store(), self._memory.agent)

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return self._all()[index]
        n = len(self)
        i = index + n if index < 0 else index
        if not 0 <= i < n:
            raise IndexError(index)
        text = side.reading_at(self._memory._store(), self._memory.agent, i)
        if text is None:
            raise IndexError(index)
        return _decode(text)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._all())

    def _all(self) -> list[Any]:
        return [_decode(t) for t in side.readings_all(self._memory._store(), self._memory.agent)]

    def __repr__(self) -> str:
        return f"RecentReadings({self._memory.agent!r}, {len(self)} readings)"
