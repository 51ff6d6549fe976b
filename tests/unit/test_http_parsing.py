"""The shared readers of what a peer sends (``fleetci.http``): ids, strict JSON, error answers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetci.http import MAX_ID, JSONTooDeep, error_message, loads_strict, parse_id


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("42", 42),
        ("007", 7),
        (str(MAX_ID), MAX_ID),
        (str(MAX_ID + 1), None),  # 19 digits, but more than a signed 64-bit id holds
        ("9" * 19, None),
        ("1" * 5000, None),  # never handed to int(): no ValueError, no time spent
        ("", None),
        ("-1", None),
        ("+1", None),
        (" 1", None),
        ("1_000", None),
        ("1e3", None),
        ("\u0661", None),  # ARABIC-INDIC DIGIT ONE: int() takes it, an id does not
        ("\xb2", None),  # SUPERSCRIPT TWO: str.isdigit() says yes
    ],
)
def test_parse_id(text: str, value: int | None) -> None:
    assert parse_id(text) == value


@given(st.text(max_size=30))
def test_parse_id_never_raises_and_round_trips(text: str) -> None:
    value = parse_id(text)
    assert value is None or (0 <= value <= MAX_ID and int(text) == value)


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b'{"a": NaN}', "NaN"),
        (b"[Infinity]", "Infinity"),
        (b"-Infinity", "Infinity"),
        (b"[" * 100_000 + b"]" * 100_000, "nested"),  # past Python's recursion limit
        (b"{not json", "Expecting"),
        (b"\xff", "can't decode"),
    ],
)
def test_loads_strict_refuses_what_json_does_not_allow(raw: bytes, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        loads_strict(raw)


def test_loads_strict_depth_limit() -> None:
    # levels: the object, the list, the inner object, its value
    assert loads_strict(b'{"a": [1, {"b": 2}]}', max_depth=4) == {"a": [1, {"b": 2}]}
    with pytest.raises(JSONTooDeep, match="deeper than 3"):
        loads_strict(b'{"a": [1, {"b": 2}]}', max_depth=3)
    assert loads_strict(b"1e400") == float("inf")  # a number, not a constant: the caller's range check


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (409, b'{"message": "job 3 is not assigned to this worker"}', "job 3 is not assigned to this worker"),
        (400, b'{"error": "older masters said error"}', "older masters said error"),
        (502, b"<html>\n  Bad gateway\n</html>", "<html> Bad gateway </html>"),
        (404, b"", "Not Found"),
        (599, b"", "HTTP 599"),
        (400, b'["not", "an", "object"]', '["not", "an", "object"]'),
        (400, b'{"message": "two\\nlines"}', "two lines"),
        (500, b'{"message": ""}', '{"message": ""}'),
    ],
)
def test_error_message_is_one_line(status: int, body: bytes, message: str) -> None:
    assert error_message(status, body) == message
