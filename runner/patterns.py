"""Output-pattern failure detection: a task's ``failure_patterns`` searched line by line.

The worker tails an action's log file and feeds each new run of bytes to a
:class:`PatternScanner`; the first output line that any pattern matches (``re.search``, as
grep does) marks the attempt failed with error kind ``output_pattern``.

Memory stays bounded whatever the output: a line longer than :data:`MAX_LINE_BYTES` is not
buffered whole but searched in windows of that size which overlap by :data:`OVERLAP_BYTES`, so a
match up to that long is found wherever it falls in the line.
"""

from __future__ import annotations

import re

from sp.ledger.errors import UsageError

MAX_LINE_BYTES = 64 * 1024
OVERLAP_BYTES = 1024
REPORT_CHARS = 1000  # the reported line is cut to about this, around the match

# Stands in for the rest of a line that continues beyond a window, so that ``^`` and ``$`` do
# not match at a window's edge as if it were the line's start or end.
_EDGE = "\x00"


class PatternScanner:
    """Find the first output line matching any of a task's failure patterns.

    Feed output as it comes (chunks may split lines anywhere, even inside a UTF-8 sequence),
    then call :meth:`finish` when the output ends (or a step of the task ends: feeding may go
    on after it, the next bytes starting a new line). Lines split on ``\\n``, ``\\r\\n`` or
    ``\\r``; bytes that are not UTF-8 decode to U+FFFD.
    """

    def __init__(self, patterns: list[str]) -> None:
        """Compile the patterns.

        :raises UsageError: a pattern is not a valid regular expression; the message names it.
        """
        compiled: list[re.Pattern[str]] = []
        for i, pattern in enumerate(patterns):
            try:
                compiled.append(re.compile(pattern))
            except re.error as e:
                raise UsageError(
                    f"failure_patterns[{i}]: {pattern!r} is not a valid regular expression: {e}"
                ) from None
        self._patterns = compiled
        self._buf = bytearray()
        self._continued = False  # the buffered bytes continue a line already partly searched
        self.matched: str | None = None
        """The first matching line (stripped), once found."""
        self.matched_pattern: str | None = None
        """The pattern that matched it (the first in the list, if several did)."""

    @property
    def buffered_bytes(self) -> int:
        """Bytes held back waiting for the end of their line (at most ``MAX_LINE_BYTES``)."""
        return len(self._buf)

    def feed(self, chunk: bytes) -> str | None:
        """Search the complete lines that ``chunk`` ends; keep a trailing partial line.

        Returns the first matching line, stripped, the one time it is found; None otherwise
        (also on every later call: only the first match is reported).
        """
        if self.matched is not None or not self._patterns:
            return None
        view = memoryview(chunk)
        # Slices of a window's size keep the buffer bounded even for one huge chunk.
        for start in range(0, len(view), MAX_LINE_BYTES):
            hit = self._feed(view[start : start + MAX_LINE_BYTES])
            if hit is not None:
                return hit
        return None

    def finish(self) -> str | None:
        """The output (or one step's output) has ended: search a last line with no newline.

        Returns the first match if it is in that line, else None; with nothing buffered (e.g.
        called twice) it returns None. Bytes fed afterwards start a new line.
        """
        text = self._buf.decode("utf-8", "replace")
        first_continued, self._continued = self._continued, False
        self._buf.clear()
        if self.matched is not None or not text:
            return None
        return self._search_lines(text, first_continued=first_continued)

    def _feed(self, piece: memoryview) -> str | None:
        # What was buffered holds no line break (but perhaps a trailing "\r"): only the new
        # bytes need looking at, which keeps many small chunks of a long line linear.
        since = max(0, len(self._buf) - 1)
        self._buf += piece
        end = len(self._buf)
        # A trailing "\r" may be the first half of "\r\n": keep it until the next byte shows.
        if self._buf[end - 1] == 0x0D:
            end -= 1
        cut = max(self._buf.rfind(b"\n", since, end), self._buf.rfind(b"\r", since, end))
        if cut >= 0:
            text = self._buf[: cut + 1].decode("utf-8", "replace")
            del self._buf[: cut + 1]
            first_continued, self._continued = self._continued, False
            hit = self._search_lines(text, first_continued=first_continued)
            if hit is not None:
                return hit
        while len(self._buf) > MAX_LINE_BYTES:
            window = self._buf[:MAX_LINE_BYTES].decode("utf-8", "replace")
            hit = self._search(window, continued=self._continued, open_end=True)
            del self._buf[: MAX_LINE_BYTES - OVERLAP_BYTES]
            self._continued = True
            if hit is not None:
                return hit
        return None

    def _search_lines(self, text: str, first_continued: bool) -> str | None:
        for i, line in enumerate(text.splitlines()):
            hit = self._search(line, continued=first_continued and i == 0, open_end=False)
            if hit is not None:
                return hit
        return None

    def _search(self, line: str, *, continued: bool, open_end: bool) -> str | None:
        subject = (_EDGE if continued else "") + line + (_EDGE if open_end else "")
        pos = 1 if continued else 0
        for pattern in self._patterns:
            m = pattern.search(subject, pos)
            if m is not None:
                self.matched = _report(line, m.start() - pos)
                self.matched_pattern = pattern.pattern
                return self.matched
        return None


def _report(line: str, at: int) -> str:
    """The stripped line, or for a very long one the part around the match."""
    text = line.strip()
    if len(text) <= REPORT_CHARS:
        return text
    at = max(0, min(len(line), at) - (len(line) - len(line.lstrip())))
    start = max(0, at - REPORT_CHARS // 5)
    end = start + REPORT_CHARS
    return ("..." if start else "") + text[start:end] + ("..." if end < len(text) else "")
