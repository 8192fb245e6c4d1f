"""The encoder and the single typed decoder of stored events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from sp.ledger.errors import CorruptEventError
from sp.ledger.events import EVENT_TYPES, AnyEvent, Event

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AnyEvent)

GENESIS_HASH = "0" * 64


def _load_sha256(data: bytes) -> Any:
    """hashlib.sha256, imported on first use: loading OpenSSL costs a read-only command 3 ms."""
    global _sha256
    from hashlib import sha256

    _sha256 = sha256
    return sha256(data)


_sha256: Callable[[bytes], Any] = _load_sha256

# type -> tag, for the append path (cheaper than reaching into __struct_config__ each time)
_TAGS: dict[type, str] = {cls: str(cls.__struct_config__.tag) for cls in EVENT_TYPES}


def tag_of(event: Event) -> str:
    """The event's type tag (the ``type`` column)."""
    try:
        return _TAGS[type(event)]
    except KeyError:
        tag = event.__struct_config__.tag
        assert isinstance(tag, str)
        return tag


def encode(event: Event) -> str:
    """Canonical JSON text of an event (field order is the Struct's; deterministic)."""
    return _encoder.encode(event).decode()


def encode_bytes(event: Event) -> bytes:
    """:func:`encode`, as UTF-8 bytes."""
    return _encoder.encode(event)


def decode(data: str | bytes, seq: int = 0) -> AnyEvent:
    """Decode one stored event.

    :raises CorruptEventError: unknown type tag, missing field or wrong type.
    """
    try:
        event: AnyEvent = _decoder.decode(data)
        return event
    except msgspec.DecodeError as e:
        raise CorruptEventError(seq, str(e)) from None


def chain_hash(
    prev_hash: str, seq: int, stream: str, version: int, type_: str, ts: int, data: str
) -> str:
    """SHA-256 over the previous hash and the event's canonical bytes.

    Every column a tamperer could change is covered, ``seq`` included, so a reordered or
    deleted row breaks the chain as surely as an edited one.
    """
    digest: str = _sha256(
        f"{prev_hash}\x1f{seq}\x1f{stream}\x1f{version}\x1f{type_}\x1f{ts}\x1f{data}".encode()
    ).hexdigest()
    return digest


def chain_hash_bytes(
    prev_hash: str, seq: int, stream: str, version: int, type_: str, ts: int, data: bytes
) -> str:
    """:func:`chain_hash` of data already encoded as UTF-8 (the append path has the bytes)."""
    digest: str = _sha256(
        f"{prev_hash}\x1f{seq}\x1f{stream}\x1f{version}\x1f{type_}\x1f{ts}\x1f".encode() + data
    ).hexdigest()
    return digest
