"""Byte counts for people: one way of writing them everywhere (the gc listing, the page)."""

from __future__ import annotations


def human_size(size: int) -> str:
    """Binary units, one decimal: 1536 -> "1.5 KiB"; below 1 KiB the bytes as they are."""
    if size < 1024:
        return f"{size} B"
    value = size / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
