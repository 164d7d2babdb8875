"""A strict reader of safetensors headers.

Why our own: huggingface_hub's local parser is lenient (25 MB cap, ignores UTF-8
errors, does not check holes or overlaps) and slow to import, and safetensors'
own reader maps the whole file.  We need only the 8-byte length and the JSON
header, validated against every rule of the format, so that every later step
(comparison, streaming copy) can trust the offsets.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import operator
import os
from itertools import chain, repeat
from typing import Any, NamedTuple

from ..errors import CorruptFileError
from . import file_cache

# Limits that real checkpoints never approach, checked before the JSON is parsed: the reference
# reader allows 100 MB, but parsing that much JSON takes over a gigabyte of memory; huggingface_hub's
# reader stops at 25 MB, and real headers are a few MB (about 100 bytes per tensor).
MAX_HEADER_BYTES = 25_000_000
MAX_TENSORS_PER_FILE = 200_000
MAX_DIM = 2**63 - 1  # torch and numpy index with signed 64-bit integers
MAX_NDIM = 64  # numpy's limit; also keeps the size product cheap

# Bits per element; sub-byte float formats pack several elements per byte.
DTYPE_BITS = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8,
    "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
    "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}


class HeaderEntry(NamedTuple):  # a tuple, not a dataclass: a 90k-tensor index builds 90k of them
    dtype: str
    shape: tuple[int, ...]
    begin: int  # relative to the data buffer
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


class SafetensorsHeader:
    """A validated header: where the data starts, its size, the metadata, and each tensor's entry.

    The entries are kept as columns (`names`, and `columns`: dtypes, shapes, begins, ends) and become
    the `tensors` dict of `HeaderEntry` only when asked for: a cached header of a 90k-tensor index is
    loaded without building an object per tensor, and most shards are never asked.
    """

    def __init__(self, path: str, data_start: int, data_size: int, metadata: dict[str, str], names: list[str],
                 columns: list[tuple[Any, ...]], numel: int, identity: tuple[int, ...] | None = None) -> None:
        self.path = path
        self.data_start = data_start  # absolute offset of the data buffer in the file
        self.data_size = data_size
        self.metadata = metadata
        self.names = names
        self.columns = columns
        self.numel = numel  # elements of all tensors: a parameter count needs no pass over 90k entries
        self.identity = identity  # of the local file it was read from (file_cache.identity), else None

    @functools.cached_property
    def tensors(self) -> dict[str, HeaderEntry]:
        tensors = dict(zip(self.names, map(_new_entry, zip(*self.columns))))  # map() and zip(): no Python loop
        if len(tensors) != len(self.names):
            raise CorruptFileError(f"{self.path}: the cached header is damaged; delete tieconv's cache folder")
        return tensors


_new_entry = functools.partial(tuple.__new__, HeaderEntry)  # called by map(): no Python frame per entry


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)  # in C; only a short dict means a repeated key, then find it
    if len(obj) != len(pairs):
        seen: set[str] = set()
        repeated = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"duplicate key {repeated!r}")
    return obj


ENTRY_FIELDS = {"dtype", "shape", "data_offsets"}


def _short(value: object, limit: int = 80) -> str:
    """repr() of a value taken from the file, cut so that no message carries a file's bulk."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _encodable(names: dict[str, Any]) -> bool:
    """False when a key or value holds a lone surrogate (JSON escapes allow `\\ud800`; UTF-8 cannot)."""
    try:
        for key, value in names.items():
            key.encode("utf-8")
            if isinstance(value, str):
                value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_header(raw: bytes, file_size: int, path: str) -> SafetensorsHeader:
    """Validate the JSON header bytes `raw` of a file of `file_size` bytes."""

    def bad(why: str) -> CorruptFileError:
        return CorruptFileError(f"{path}: not a valid safetensors file: {why}; re-download or re-save it")

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad(f"header is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    if not text.lstrip().startswith("{"):
        raise bad("header is not a JSON object")
    # an upper bound on the entries (the field name can only be quoted once per entry, or in a name):
    # counted in C, so a header of a million empty tensors is refused before it costs a gigabyte to parse
    entries = raw.count(b'"data_offsets"')
    if entries > MAX_TENSORS_PER_FILE:
        raise bad(f"about {entries} tensors, over the limit of {MAX_TENSORS_PER_FILE} per file")
    try:
        doc = json.loads(text, object_pairs_hook=_reject_duplicates)
    except RecursionError:
        raise bad("header JSON is nested too deeply") from None
    except ValueError as exc:
        raise bad(f"header is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise bad("header is not a JSON object")

    data_start = 8 + len(raw)
    data_size = file_size - data_start
    metadata = doc.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise bad("__metadata__ must map strings to strings")
    if not _encodable(metadata) or not _encodable(doc):
        raise bad("a name holds a lone UTF-16 surrogate, which no UTF-8 file can hold")

    valid = _valid_columns(doc, data_size)
    if valid is not None:
        names, columns, numel = valid
        return SafetensorsHeader(path, data_start, data_size, dict(metadata), names, columns, numel)

    # A rule is broken (or the header is empty): find the first broken one, entry by entry, and say which.
    tensors: dict[str, HeaderEntry] = {}
    numel = 0
    # `type(x) is int` rejects bools (JSON true/false) as the format does
    for name, info in doc.items():
        if type(info) is not dict or info.keys() != ENTRY_FIELDS:
            raise bad(f"entry {_short(name)} must have exactly dtype, shape and data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        dtype_bits = DTYPE_BITS.get(dtype) if type(dtype) is str else None
        if dtype_bits is None:
            raise bad(f"entry {_short(name)} has unknown dtype {_short(dtype)}")
        # type() is not int also refuses bools; the bounds keep sizes within what any file can hold
        if type(shape) is not list or len(shape) > MAX_NDIM or (shape and (
                set(map(type, shape)) != {int} or min(shape) < 0 or max(shape) > MAX_DIM)):
            raise bad(f"entry {_short(name)} has an invalid shape {_short(shape)}")
        if type(offsets) is not list or len(offsets) != 2 or type(offsets[0]) is not int \
                or type(offsets[1]) is not int or not 0 <= offsets[0] <= offsets[1]:
            raise bad(f"entry {_short(name)} has invalid data_offsets {_short(offsets)}")
        count = math.prod(shape)
        numel += count
        bits = count * dtype_bits
        if bits % 8 or bits // 8 != offsets[1] - offsets[0]:
            raise bad(
                f"entry {_short(name)}: {dtype} {_short(shape)} needs {bits / 8:g} bytes "
                f"but data_offsets span {offsets[1] - offsets[0]}"
            )
        if offsets[1] > data_size:
            raise bad(f"entry {_short(name)} ends at byte {offsets[1]}, past the data ({data_size} bytes)")
        tensors[name] = HeaderEntry(dtype, tuple(shape), offsets[0], offsets[1])

    # The entries, sorted by offset, must tile the buffer exactly.
    position = 0
    for name, entry in sorted(tensors.items(), key=lambda item: (item[1][2], item[1][3])):
        if entry.begin < position:
            raise bad(f"entry {_short(name)} overlaps the previous tensor")
        if entry.begin > position:
            raise bad(f"a hole of {entry.begin - position} bytes before entry {_short(name)}")
        position = entry.end
    if position != data_size:
        raise bad(f"{data_size - position} bytes after the last tensor belong to no entry")
    header = SafetensorsHeader(path, data_start, data_size, dict(metadata), list(tensors),
                               list(zip(*tensors.values())) or [(), (), (), ()], numel)
    header.__dict__["tensors"] = tensors  # the cached_property, already known
    return header


def _valid_columns(doc: dict[str, Any], data_size: int) -> tuple[list[str], list[tuple[Any, ...]], int] | None:
    """(names, columns, elements) when every entry keeps every rule `parse_header`'s loop checks, else None.

    The same rules, checked a column at a time by map(), set() and list comparisons, which run in C: a cold
    read of a 90k-tensor index spent most of its time in the loop, entry by entry. Only a header that breaks
    a rule (or has no entries) goes to the loop, which finds the first broken rule and says which.
    """
    entries = list(doc.values())
    if not entries or set(map(type, entries)) != {dict} \
            or not all(map(operator.eq, map(dict.keys, entries), repeat(ENTRY_FIELDS))):
        return None
    dtypes = list(map(operator.itemgetter("dtype"), entries))
    shapes = list(map(operator.itemgetter("shape"), entries))
    offsets = list(map(operator.itemgetter("data_offsets"), entries))
    if set(map(type, dtypes)) != {str} or not set(dtypes) <= DTYPE_BITS.keys():
        return None
    if set(map(type, shapes)) != {list} or max(map(len, shapes)) > MAX_NDIM:
        return None
    dims = list(chain.from_iterable(shapes))  # type() is not int also refuses bools, as the loop does
    if dims and (set(map(type, dims)) != {int} or min(dims) < 0 or max(dims) > MAX_DIM):
        return None
    if set(map(type, offsets)) != {list} or set(map(len, offsets)) != {2}:
        return None
    begins = list(map(operator.itemgetter(0), offsets))
    ends = list(map(operator.itemgetter(1), offsets))
    if set(map(type, begins)) | set(map(type, ends)) != {int}:
        return None
    counts = list(map(math.prod, shapes))
    bits = list(map(operator.mul, counts, map(DTYPE_BITS.__getitem__, dtypes)))
    # each span is exactly its tensor's bytes (so no entry ends before it begins)
    if any(map(operator.mod, bits, repeat(8))) \
            or list(map(operator.floordiv, bits, repeat(8))) != list(map(operator.sub, ends, begins)):
        return None
    # sorted by offset, each entry begins where the one before ended, from 0 to the end of the data (so
    # none begins before 0 or ends past the data)
    spans = sorted(zip(begins, ends))
    starts, stops = list(map(operator.itemgetter(0), spans)), list(map(operator.itemgetter(1), spans))
    if starts[0] != 0 or starts[1:] != stops[:-1] or stops[-1] != data_size:
        return None
    return list(doc), [tuple(dtypes), tuple(map(tuple, shapes)), tuple(begins), tuple(ends)], sum(counts)


def read_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Read and strictly validate the header of the safetensors file at `path`.

    Raises `CorruptFileError` naming the file and the broken rule.

    Example:
        >>> header = read_header("fixtures/llama-duplicated/model.safetensors")
        >>> header.tensors["lm_head.weight"].dtype
        'BF16'
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            stat = os.fstat(f.fileno())
            file_size = stat.st_size
            entry = file_cache.recorded("header", stat)  # read once: by identity now, by digest below
            unchanged = entry is not None and entry[0] == file_cache.identity(stat)
            cached = _cached_header(path, stat, entry[1]) if entry and unchanged else None
            if cached is not None:
                return cached
            prefix = f.read(8)
            if len(prefix) < 8:
                raise CorruptFileError(f"{path}: truncated: {file_size} bytes is too short for a safetensors file")
            length = int.from_bytes(prefix, "little")
            if length > MAX_HEADER_BYTES:
                raise CorruptFileError(
                    f"{path}: header claims {length} bytes, over the {MAX_HEADER_BYTES}-byte cap; not a safetensors file?"
                )
            if 8 + length > file_size:
                raise CorruptFileError(
                    f"{path}: truncated: header claims {length} bytes but the file has {file_size - 8} after the length"
                )
            raw = f.read(length)
    except IsADirectoryError:
        raise CorruptFileError(f"{path}: is a folder, expected a safetensors file") from None
    except OSError as exc:
        raise CorruptFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    digest = hashlib.sha256(raw).digest() if len(raw) >= CACHED_HEADER_BYTES else None
    header = (_cached_header(path, stat, entry[1], digest) if digest and entry else None) or \
        parse_header(raw, file_size, path)
    header.identity = file_cache.identity(stat)
    if digest:
        _store_header(stat, header, digest)
    return header


# Only big headers are cached (file_cache): small ones parse in less time than a cache file takes to read.
CACHED_HEADER_BYTES = 32 << 10


def _cached_header(path: str, stat: os.stat_result, value: Any,
                   digest: bytes | None = None) -> SafetensorsHeader | None:
    """The header validated earlier, from the cache entry `value`: recorded for the file as it is now (its
    identity), or, given the `digest` of the header bytes the file holds now, for any earlier state of the
    same inode and size whose header bytes had that digest (validation depends on nothing else: the
    header's bytes and the file's size)."""
    try:
        data_start, data_size, metadata, numel, names, columns, recorded_digest = value
    except (TypeError, ValueError):
        return None
    if len(columns) != 4 or any(len(c) != len(names) for c in columns):
        return None
    if digest is not None and (recorded_digest != digest or data_start + data_size != stat.st_size):
        return None
    return SafetensorsHeader(path, data_start, data_size, metadata, names, columns, numel, file_cache.identity(stat))


def _store_header(stat: os.stat_result, header: SafetensorsHeader, digest: bytes) -> None:
    # columns, which marshal loads faster than 90k small tuples and which become entries without a Python loop
    file_cache.store("header", stat, (header.data_start, header.data_size, header.metadata, header.numel,
                                      header.names, header.columns, digest))
