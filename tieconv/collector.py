"""The cyclic garbage collector, paused while a large checkpoint is worked on.

A 90k-tensor index makes hundreds of thousands of small objects (header columns, the key table, the
plan's entries) that stay alive until the work is done. With the collector running, every few hundred
allocations start a collection, and the older generations walk all of them again and again: a third of
`tie --link`'s time on the DeepSeek-V3 shape, before it was paused (bench/bench_index.py --tie). The
objects hold strings, numbers and tuples, so there are no cycles to collect meanwhile; the collector
runs again, as it was, when the work is done.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
