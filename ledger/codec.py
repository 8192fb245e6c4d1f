"""The encoder and the single typed decoder of stored events."""

from __future__ import annotations

import hashlib

import msgspec

from .errors import CorruptEventError
from .events import AnyEvent, Event

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AnyEvent)

GENESIS_HASH = "0" * 64


def encode(event: Event) -> str:
    """Canonical JSON text of an event (field order is the Struct's; deterministic)."""
    return _encoder.encode(event).decode()


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
    h = hashlib.sha256()
    h.update(f"{prev_hash}\x1f{seq}\x1f{stream}\x1f{version}\x1f{type_}\x1f{ts}\x1f".encode())
    h.update(data.encode())
    return h.hexdigest()
