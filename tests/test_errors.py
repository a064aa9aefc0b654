"""The one helper that turns any error into one line."""

from __future__ import annotations

from mmr5_batch.errors import error_line


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no")


def test_error_line_is_type_and_first_line_and_never_fails():
    assert error_line(ValueError("bad value\nmore detail")) == "ValueError: bad value"
    assert error_line(KeyError()) == "KeyError"
    assert error_line(OSError("   ")) == "OSError"
    assert error_line(Unprintable()) == "Unprintable"
