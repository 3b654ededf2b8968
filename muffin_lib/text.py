"""Counts in messages, as a user reads them: "1 epoch", "2 epochs", "1 extra copy"."""

from __future__ import annotations


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """``plural(1, "epoch")`` -> "1 epoch", ``plural(0, "file")`` -> "0 files" (or ``plural_form``)."""
    return f"{count} {noun if count == 1 else plural_form or noun + 's'}"
