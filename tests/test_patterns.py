"""Output-pattern failure detection, fed the way a worker tails a log: arbitrary chunks."""

from __future__ import annotations

import tracemalloc

import pytest

from sp.ledger.errors import UsageError
from sp.runner.patterns import MAX_LINE_BYTES, OVERLAP_BYTES, REPORT_CHARS, PatternScanner

LOG = (b"fetching 120 papers\n"
       b"  classify: ok\n"
       b"  FATAL: quota exceeded for api.arxiv.org  \n"
       b"Traceback (most recent call last):\n"
       b"done\n")


def feed_all(scanner: PatternScanner, chunks: list[bytes]) -> list[str]:
    hits = [h for c in chunks if (h := scanner.feed(c)) is not None]
    last = scanner.finish()
    return hits + ([last] if last is not None else [])


def test_whole_lines() -> None:
    s = PatternScanner([r"FATAL"])
    assert s.feed(LOG) == "FATAL: quota exceeded for api.arxiv.org"
    assert s.matched == "FATAL: quota exceeded for api.arxiv.org"
    assert s.matched_pattern == "FATAL"


@pytest.mark.parametrize("size", [1, 2, 3, 7, 16, 64])
def test_lines_split_across_chunks(size: int) -> None:
    s = PatternScanner([r"quota exceeded"])
    chunks = [LOG[i : i + size] for i in range(0, len(LOG), size)]
    assert feed_all(s, chunks) == ["FATAL: quota exceeded for api.arxiv.org"]


def test_no_match_until_the_line_is_complete() -> None:
    s = PatternScanner([r"^error: disk full$"])
    assert s.feed(b"ok\nerror: disk") is None
    assert s.feed(b" full") is None  # might still go on: "error: disk full of cats"
    assert s.feed(b"\nnext\n") == "error: disk full"


def test_multiple_patterns_first_line_wins() -> None:
    # The traceback pattern is listed first, but the FATAL line comes first in the output.
    s = PatternScanner([r"^Traceback", r"FATAL"])
    assert s.feed(LOG) == "FATAL: quota exceeded for api.arxiv.org"
    assert s.matched_pattern == "FATAL"


def test_only_the_first_match_is_reported() -> None:
    s = PatternScanner([r"FATAL", r"Traceback"])
    chunks = [line + b"\n" for line in LOG.split(b"\n") if line] * 3
    assert feed_all(s, chunks) == ["FATAL: quota exceeded for api.arxiv.org"]


def test_no_patterns_never_match_nor_buffer() -> None:
    s = PatternScanner([])
    assert s.feed(LOG + b"partial") is None
    assert s.buffered_bytes == 0
    assert s.finish() is None


def test_trailing_partial_line_is_flushed_by_finish() -> None:
    s = PatternScanner([r"Segmentation fault"])
    assert s.feed(b"working\nSegmentation fa") is None
    assert s.feed(b"ult (core dumped)") is None
    assert s.finish() == "Segmentation fault (core dumped)"
    assert s.finish() is None


def test_finish_ends_a_line_and_feeding_goes_on() -> None:
    # A task's steps share one scanner: finish() after each step, then the next step's output.
    s = PatternScanner([r"^step 2 broke$"])
    assert s.feed(b"step 1 ok\nstep 2") is None
    assert s.finish() is None  # "step 2" was a line of its own
    assert s.feed(b" broke\n") is None  # so this one is " broke", not "step 2 broke"
    assert s.feed(b"step 2 broke\n") == "step 2 broke"


def test_crlf_and_carriage_returns_end_lines() -> None:
    s = PatternScanner([r"^ERROR$"])
    # "\r\n" split between chunks is one line end; a progress bar's "\r" also ends a line.
    assert s.feed(b"50%\r") is None
    assert s.feed(b"\nprogress 10%\rERROR\r") is None
    assert s.feed(b"\n") == "ERROR"


def test_utf8_split_inside_a_character() -> None:
    line = "Fehler: Datei über Größe\n".encode()
    cut = line.index("ü".encode()) + 1  # between the two bytes of "ü"
    s = PatternScanner([r"über Größe"])
    assert s.feed(line[:cut]) is None
    assert s.feed(line[cut:]) == "Fehler: Datei über Größe"


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    s = PatternScanner([r"bad \ufffd+ byte"])
    assert s.feed(b"bad \xff\xfe byte\n") == "bad \ufffd\ufffd byte"


def test_invalid_regex_names_the_pattern() -> None:
    with pytest.raises(UsageError) as info:
        PatternScanner([r"ok", r"unclosed (group"])
    message = str(info.value)
    assert "failure_patterns[1]" in message
    assert "'unclosed (group'" in message


def test_long_line_without_newline_stays_bounded() -> None:
    s = PatternScanner([r"PANIC"])
    chunk = b"x" * 8192
    tracemalloc.start()
    try:
        for _ in range(128):  # 1 MiB, no newline
            assert s.feed(chunk) is None
            assert s.buffered_bytes <= MAX_LINE_BYTES
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 512 * 1024
    assert s.finish() is None


def test_one_huge_chunk_stays_bounded() -> None:
    data = b"y" * (1 << 20)
    s = PatternScanner([r"PANIC"])
    tracemalloc.start()
    try:
        assert s.feed(data) is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert s.buffered_bytes <= MAX_LINE_BYTES
    assert peak < 512 * 1024


@pytest.mark.parametrize("offset", [10, MAX_LINE_BYTES - 3, MAX_LINE_BYTES * 7 + 123, 900_000])
def test_match_anywhere_in_a_long_line(offset: int) -> None:
    line = b"z" * offset + b"kernel PANIC here" + b"z" * (1_000_000 - offset) + b"\n"
    s = PatternScanner([r"kernel PANIC"])
    hits = feed_all(s, [line[i : i + 4096] for i in range(0, len(line), 4096)])
    assert len(hits) == 1
    assert "kernel PANIC here" in hits[0]
    assert len(hits[0]) <= REPORT_CHARS + 6  # cut around the match, not 1 MB of z


def test_match_straddling_a_window_edge() -> None:
    edge = MAX_LINE_BYTES - OVERLAP_BYTES // 2
    line = b"a" * (edge - 5) + b"OUT OF MEMORY" + b"a" * 200_000
    s = PatternScanner([r"OUT OF MEMORY"])
    assert feed_all(s, [line]) != []


def test_anchors_do_not_match_at_window_edges() -> None:
    # Were windows taken for lines, "^a" would match at each window's start and "a$" at each
    # window's end; this line starts with "b" and ends with "b".
    line = b"b" + b"a" * 300_000 + b"b"
    s = PatternScanner([r"^a", r"a$"])
    assert feed_all(s, [line[i : i + 1000] for i in range(0, len(line), 1000)]) == []
    s = PatternScanner([r"^b", r"b$"])
    assert feed_all(s, [line + b"\n"]) != []
