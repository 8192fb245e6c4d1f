"""JSON from outside (``sp checkpoint`` data, webhook bodies), decoded without surprises.

msgspec decodes recursively: 100 000 ``[`` raise RecursionError, which is not a DecodeError.
Nesting is measured first, in one pass over the bytes, and refused past :data:`MAX_DEPTH` with
the byte where it went too deep. Every refusal is one :class:`UsageError` line naming a byte.
"""

from __future__ import annotations

from typing import Any

import msgspec

from sp.ledger.errors import UsageError

MAX_DEPTH = 128


def too_deep(data: bytes, limit: int = MAX_DEPTH) -> int | None:
    """The offset of the first ``[`` or ``{`` nested deeper than ``limit`` (outside strings)."""
    depth = 0
    in_string = escaped = False
    for i, byte in enumerate(data):
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return i
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return None


def decode(data: bytes | str) -> Any:
    """Decode untrusted JSON text into plain values.

    :raises UsageError: not JSON, nested deeper than :data:`MAX_DEPTH`, or a number out of
        range; the message names the byte (``(byte 12)``).
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    try:  # msgspec raises UnicodeDecodeError (not a DecodeError) at an offset in the string
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"not JSON: not UTF-8 text (byte {e.start})") from None
    at = too_deep(raw)
    if at is not None:
        raise UsageError(f"not JSON we accept: nested deeper than {MAX_DEPTH} levels "
                         f"(byte {at})")
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as e:
        message = str(e)
        if "byte" not in message and "`$" not in message:
            message += f" (byte {len(raw)})"  # "Input data was truncated": at the end
        raise UsageError(f"not JSON: {message}") from None
