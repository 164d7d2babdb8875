"""What tieconv derived from a file, remembered by the file's identity, so a warm inspect of a large
checkpoint reads small marshal files instead of parsing and validating megabytes of JSON again (the
parse, not the I/O, is what costs: 10 MB of headers and a 9 MB index for DeepSeek-V3).

The identity is (device, inode, size, mtime and ctime in ns): ctime cannot be set back by a user, so a
changed file misses and is parsed and validated again. Cache files are named by device and inode (no
realpath, no hash: for 161 shards those cost more than the reads). Values are marshalled: builtins
only, loaded faster than JSON or pickle. A damaged or foreign cache file is ignored, never trusted
beyond its shape; a cache folder that cannot be written is silently skipped.
"""

from __future__ import annotations

import marshal
import os
import tempfile
from typing import Any

_SCHEMA = 3  # bump when what any kind stores changes


def identity(stat: os.stat_result) -> tuple[int, ...]:
    return (_SCHEMA, stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


def _cache_file(kind: str, stat: os.stat_result) -> str:
    from ..knowledge.architecture import cache_dir

    return os.path.join(cache_dir(), "headers", f"{kind}-{stat.st_dev:x}-{stat.st_ino:x}.marshal")


def load(kind: str, stat: os.stat_result) -> Any:
    """What `store` recorded of the file with `stat` as `kind`, or None (absent, changed, damaged)."""
    try:
        with open(_cache_file(kind, stat), "rb") as f:
            recorded, value = marshal.loads(f.read())
    except (OSError, ValueError, EOFError, TypeError):
        return None
    return value if recorded == identity(stat) else None


def store(kind: str, stat: os.stat_result, value: Any) -> None:
    """Record `value` (builtins only) for the file with `stat`, atomically."""
    try:
        target = _cache_file(kind, stat)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=f".{kind}-", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(marshal.dumps((identity(stat), value)))
        os.replace(tmp, target)
    except (OSError, ValueError):
        pass


def carry_over_link(kind: str, before: os.stat_result, after: os.stat_result) -> None:
    """Keep what was recorded of a file across the hard link tieconv just made to it (`tie --link`).

    A link changes the file's ctime only, so without this every linked shard would miss the cache, in
    the output's verification and in every later inspect of the input. Carried only when the entry
    matches the file as it was just before the link (it has not changed since it was validated) and
    the link changed nothing but the ctime (same inode, size and mtime).
    """
    if (before.st_dev, before.st_ino, before.st_size, before.st_mtime_ns) != \
            (after.st_dev, after.st_ino, after.st_size, after.st_mtime_ns):
        return
    value = load(kind, before)
    if value is not None:
        store(kind, after, value)
