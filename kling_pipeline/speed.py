"""Speed helpers for the hot paths of `plan`: reading a storyboard and its lock file."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many small objects.

    Loading a storyboard or a lock file makes tens of thousands of dicts and strings and
    almost no cycles, yet each allocation threshold sets off a collection that walks them all:
    about a tenth of a 1,000-shot `plan`. Reference counting still frees everything as usual;
    the collector runs again afterwards. Nested use leaves it paused until the outermost ends.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
