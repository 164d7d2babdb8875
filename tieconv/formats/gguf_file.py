"""GGUF (llama.cpp) files: read tensor descriptions, and lay out a copy with tensors dropped or added
(`output_header`; the conversion's writer copies the bytes). The `gguf` package gives the tensor types.

GGUF carries no tie flag; llama.cpp falls back to `token_embd.weight` when `output.weight`
is absent, so the no-config rule of `inspect` applies.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from ..errors import CorruptFileError, UnsupportedCheckpointError
from .tensor_file import StoredTensor, TensorFile, read_file_range, stream_file_range

if TYPE_CHECKING:
    import mmap

EMBED = "token_embd.weight"
HEAD = "output.weight"


# Limits that real files never approach (the largest vocabularies hold 262,144 tokens plus merges).
MAX_GGUF_STRINGS = 1_500_000  # metadata strings, array items included
MAX_GGUF_ITEMS = 64_000_000  # metadata values of every type
MAX_GGUF_TENSORS = 200_000
MAX_GGUF_KEYS = 65_536  # metadata pairs (real files have about 50): every key is remembered, to refuse repeats
_SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUFValueType -> size
_STRING, _ARRAY = 8, 9


def llama_cpp_head_rule(arch: str | None) -> str | None:
    """Why llama.cpp cannot load a GGUF of `arch` without output.weight, or None where it falls back.

    The lists are data read from llama.cpp's loader source (tieconv/knowledge/llamacpp_output.json): an
    architecture that any read version requires the head for is refused, to be safe across builds.
    """
    import json
    from importlib import resources

    rules = json.loads(resources.files("tieconv.knowledge").joinpath("llamacpp_output.json").read_text())
    if arch in rules["requires_output"]:
        return f"llama.cpp's {arch} loader requires output.weight (it does not fall back to token_embd.weight)"
    older = rules["required_before_fallback_was_added"].get(arch or "")
    if older:
        return f"{older} requires output.weight for {arch}"
    return None


def architecture(path: Path) -> str | None:
    """The GGUF's general.architecture, or None.

    gguf's writer puts it first; only the first few metadata entries are looked at (strings and
    scalars), so a hostile file costs nothing here (`read_tensors` applies the limits).
    """
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
        order = "<" if struct.unpack_from("<I", head, 4)[0] & 0xFFFF else ">"
        (n_kv,) = struct.unpack_from(order + "Q", head, 16)
        pos = 24
        for _ in range(min(n_kv, 16)):
            (length,) = struct.unpack_from(order + "Q", head, pos)
            key = head[pos + 8 : pos + 8 + length]
            pos += 8 + length
            (kind,) = struct.unpack_from(order + "I", head, pos)
            pos += 4
            if kind == _STRING:
                (length,) = struct.unpack_from(order + "Q", head, pos)
                value = head[pos + 8 : pos + 8 + length]
                pos += 8 + length
                if key == b"general.architecture":
                    return value.decode("utf-8", "replace")
            elif kind in _SCALAR_BYTES:
                pos += _SCALAR_BYTES[kind]
            else:
                return None
    except (OSError, struct.error):
        return None
    return None




class GGUFFile(TensorFile):
    """A GGUF file named `name`: llama.cpp tensor types (often quantized), read at the offsets its table gives."""

    writes_as: ClassVar[str] = "gguf"

    def __init__(self, name: str, path: Path) -> None:
        super().__init__(name)
        self.path = path
        self._tensors: dict[str, StoredTensor] = {}
        self.layout = read_layout(path)
        for key, dtype, shape, nbytes, offset in self.layout.tensors:
            if key in self._tensors:
                raise CorruptFileError(f"{path}: tensor {key!r} appears twice")
            self._tensors[key] = StoredTensor(key, dtype, shape, nbytes, name, (name, offset), offset)

    def keys(self) -> list[str]:
        return list(self._tensors)

    @property
    def tensors(self) -> dict[str, StoredTensor]:
        return self._tensors

    def iter_bytes(self, info: StoredTensor, chunk_bytes: int) -> Iterator[bytes | bytearray]:
        return stream_file_range(self.path, info.offset or 0, info.nbytes, chunk_bytes, info.key)

    def read_range(self, info: StoredTensor, start: int, length: int) -> bytes:
        return read_file_range(self, self.path, (info.offset or 0) + start, length)

    def load_tensor(self, info: StoredTensor) -> Any:
        return load_tensor(self.path, info.key)

    def check_torch_loadable(self, where: str) -> None:
        raise UnsupportedCheckpointError(
            f"{where}: GGUF tensors are llama.cpp types (often quantized), not torch tensors; "
            "load_state_dict reads safetensors and torch checkpoints (inspect, tie and untie read GGUF)")


class GGUFLayout(NamedTuple):
    """Where the parts of a GGUF file lie: enough to write a copy with tensors dropped or added, the
    metadata's bytes copied as they are and the tensors' bytes copied in the kernel (`output_header`)."""

    order: str  # struct byte order: "<", or ">" for a big-endian file
    metadata_end: int  # the header and every metadata pair are the bytes before it
    alignment: int
    tensors: list[tuple[str, str, tuple[int, ...], int, int]]  # (name, type name, shape, nbytes, data offset)
    descriptions: dict[str, bytes]  # name -> its tensor-info record after the name, up to its offset field


def read_tensors(path: Path) -> list[tuple[str, str, tuple[int, ...], int, int]]:
    """[(name, type name, shape, nbytes, absolute data offset)] of the GGUF file at `path`."""
    return read_layout(path).tensors


def read_layout(path: Path) -> GGUFLayout:
    """The layout of the GGUF file at `path`, every part checked against the file and the limits above.

    Why our own: gguf's GGUFReader builds numpy views for every metadata value (a 200,000-token
    vocabulary costs 280 MB and seconds; two million empty strings, gigabytes). Only the tensor
    descriptions are needed here, so the metadata is stepped over, counted against the limits above.
    """
    import mmap

    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 24:
                raise CorruptFileError(f"{path}: {size} bytes is too short for a GGUF file")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return _read_tensors(data, size, path)
    except CorruptFileError:
        raise
    except (struct.error, IndexError, UnicodeDecodeError, ValueError, KeyError, OSError) as exc:
        raise CorruptFileError(f"{path}: not a readable GGUF file ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:120] if str(exc) else ''})") from None


def _read_tensors(data: mmap.mmap, size: int, path: Path,
                  fields: list[tuple[bytes, int, int, int]] | None = None) -> GGUFLayout:
    """The layout; `fields`, where given, gets each metadata pair's (key, value type, value's byte range)."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    if data[:4] != b"GGUF":
        raise CorruptFileError(f"{path}: not a GGUF file (no GGUF magic)")
    order = "<" if struct.unpack_from("<I", data, 4)[0] & 0xFFFF else ">"  # as GGUFReader tells byte order
    version, n_tensors, n_kv = struct.unpack_from(order + "IQQ", data, 4)
    if version not in (2, 3):
        raise CorruptFileError(f"{path}: GGUF version {version} is not supported (2 or 3)")
    if n_tensors > MAX_GGUF_TENSORS or n_kv > MAX_GGUF_KEYS:
        raise CorruptFileError(f"{path}: claims {n_tensors} tensors and {n_kv} metadata entries, over the limits "
                               f"({MAX_GGUF_TENSORS}, {MAX_GGUF_KEYS})")
    pos = 24
    strings = items = 0
    alignment = 32

    def u32(at: int) -> int:
        value: int = struct.unpack_from(order + "I", data, at)[0]
        return value

    def u64(at: int) -> int:
        value: int = struct.unpack_from(order + "Q", data, at)[0]
        return value

    def skip_string(at: int) -> int:
        length = u64(at)
        if at + 8 + length > size:
            raise CorruptFileError(f"{path}: a metadata string runs past the end of the file")
        return at + 8 + length

    def too_much() -> CorruptFileError:
        return CorruptFileError(f"{path}: metadata holds over {MAX_GGUF_STRINGS} strings or {MAX_GGUF_ITEMS} values, "
                                "far more than a real model; refusing it")

    keys: set[bytes] = set()
    for _ in range(n_kv):
        key_end = skip_string(pos)
        key = bytes(data[pos + 8 : key_end])
        # as gguf's GGUFReader: a key twice (which one counts? general.alignment decides where the data lies)
        # or not UTF-8 (the spec's keys are ASCII) is refused, so every key names one value
        if key in keys:
            raise CorruptFileError(f"{path}: metadata key {key[:80]!r} appears twice; re-convert or re-download it")
        keys.add(key)
        try:
            key.decode("utf-8")
        except UnicodeDecodeError:
            raise CorruptFileError(f"{path}: metadata key {key[:80]!r} is not UTF-8; re-convert or re-download it") \
                from None
        kind = u32(key_end)
        if key == b"general.alignment" and kind != 4:  # GGUFReader refuses it, llama.cpp asserts
            raise CorruptFileError(f"{path}: general.alignment is of value type {kind}, not uint32 (4), so where "
                                   "the data lies is unknown; re-convert the file")
        pos = value_start = key_end + 4
        items += 1
        if kind == _STRING:
            strings += 1
            pos = skip_string(pos)
        elif kind == _ARRAY:
            sub, count = u32(pos), u64(pos + 4)
            pos += 12
            items += count
            if items > MAX_GGUF_ITEMS:
                raise too_much()
            if sub == _STRING:
                strings += count
                if strings > MAX_GGUF_STRINGS:
                    raise too_much()
                length_at = struct.Struct(order + "Q").unpack_from
                for _ in range(count):  # skip_string inlined: a 262k-token vocabulary steps 262k strings
                    pos += 8 + length_at(data, pos)[0]
                    if pos > size:
                        raise CorruptFileError(f"{path}: a metadata string runs past the end of the file")
            elif sub in _SCALAR_BYTES:
                pos += count * _SCALAR_BYTES[sub]
            else:  # arrays of arrays: gguf's writer never nests them
                raise CorruptFileError(f"{path}: metadata array of type {sub} is not supported")
        elif kind in _SCALAR_BYTES:
            if key == b"general.alignment":
                alignment = u32(pos)
            pos += _SCALAR_BYTES[kind]
        else:
            raise CorruptFileError(f"{path}: metadata value of unknown type {kind}")
        if strings > MAX_GGUF_STRINGS or items > MAX_GGUF_ITEMS:
            raise too_much()
        if pos > size:
            raise CorruptFileError(f"{path}: metadata runs past the end of the file")
        if fields is not None:
            fields.append((key, kind, value_start, pos))
    if alignment == 0 or alignment & (alignment - 1):
        raise CorruptFileError(f"{path}: general.alignment {alignment} is not a power of two")

    metadata_end = pos
    infos = []
    descriptions: dict[str, bytes] = {}
    for _ in range(n_tensors):
        name_end = skip_string(pos)
        name = bytes(data[pos + 8 : name_end]).decode("utf-8")
        n_dims = u32(name_end)
        if n_dims > 8:
            raise CorruptFileError(f"{path}: tensor {name[:80]!r} has {n_dims} dimensions (GGUF allows 4)")
        dims = struct.unpack_from(order + "Q" * n_dims, data, name_end + 4)
        type_id, offset = struct.unpack_from(order + "IQ", data, name_end + 4 + 8 * n_dims)
        descriptions[name] = bytes(data[name_end : name_end + 4 + 8 * n_dims + 4])
        pos = name_end + 4 + 8 * n_dims + 12
        try:
            tensor_type = GGMLQuantizationType(type_id)
            block_size, type_size = GGML_QUANT_SIZES[tensor_type]
        except (ValueError, KeyError):
            raise CorruptFileError(f"{path}: tensor {name[:80]!r} has unknown type {type_id}") from None
        if dims and dims[0] % block_size:  # its size is no whole number of blocks (llama.cpp and GGUFReader refuse it)
            raise CorruptFileError(f"{path}: tensor {name[:80]!r} has rows of {dims[0]} elements, not a multiple of "
                                   f"its {tensor_type.name} blocks of {block_size}")
        numel = 1
        for d in dims:
            numel *= d
        infos.append((name, tensor_type.name, tuple(dims), numel * type_size // block_size, offset))
    start = pos + (-pos % alignment)
    out = []
    for name, type_name, shape, nbytes, offset in infos:
        if start + offset + nbytes > size:
            raise CorruptFileError(f"{path}: tensor {name[:80]!r} runs past the end of the file")
        out.append((name, type_name, shape, nbytes, start + offset))
    return GGUFLayout(order, metadata_end, alignment, out, descriptions)


def load_tensor(path: Path, name: str) -> Any:
    """A tensor of the GGUF file as float32 torch (quantized types dequantized by gguf).

    Only the tensor's bytes are read (see `read_tensors` for why not GGUFReader).
    """
    import gguf
    import numpy as np
    import torch

    (_, type_name, shape, nbytes, offset), = [t for t in read_tensors(path) if t[0] == name]
    qtype = gguf.GGMLQuantizationType[type_name]
    raw = np.fromfile(path, dtype=np.uint8, count=nbytes, offset=offset)
    rows = tuple(reversed(shape))  # GGUF lists dimensions innermost first
    plain = {"F32": np.float32, "F16": np.float16, "F64": np.float64}
    if type_name in plain:
        values = raw.view(plain[type_name]).reshape(rows)
    else:
        values = gguf.quants.dequantize(raw.reshape(*rows[:-1], -1), qtype)
    return torch.from_numpy(np.array(values, dtype=np.float32))  # a writable copy


def read_metadata(path: Path) -> dict[str, Any]:
    """Every metadata pair of the GGUF file at `path` as key -> value; an array of over 16 items as
    "<N items, sha256 ...>" of its bytes (a 128k-token vocabulary compares as one digest).

    Read with the same stepper as `read_layout` (checked against the same limits), not GGUFReader: see there.
    """
    import hashlib
    import mmap

    fields: list[tuple[bytes, int, int, int]] = []
    out: dict[str, Any] = {}
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            layout = _read_tensors(data, os.fstat(f.fileno()).st_size, path, fields)
            order = layout.order

            def scalar(kind: int, at: int) -> Any:
                return struct.unpack_from(order + _SCALAR_FORMAT[kind], data, at)[0]

            def string(at: int) -> tuple[str | tuple[str, str], int]:
                length = struct.unpack_from(order + "Q", data, at)[0]
                raw = bytes(data[at + 8 : at + 8 + length])
                try:
                    return raw.decode("utf-8"), at + 8 + length
                except UnicodeDecodeError:  # a tuple, which no string or (list) array compares equal to
                    return ("not UTF-8", raw.hex()), at + 8 + length

            for key, kind, start, end in fields:
                name = key.decode("utf-8")  # the stepper refused keys that are not
                if kind == _STRING:
                    out[name] = string(start)[0]
                elif kind != _ARRAY:
                    out[name] = scalar(kind, start)
                else:
                    sub, count = struct.unpack_from(order + "IQ", data, start)
                    if count > 16:
                        digest = hashlib.sha256(data[start:end]).hexdigest()[:16]
                        out[name] = f"<{count} items, sha256 {digest}>"
                        continue
                    items, at = [], start + 12
                    for _ in range(count):
                        if sub == _STRING:
                            item, at = string(at)
                        else:
                            item, at = scalar(sub, at), at + _SCALAR_BYTES[sub]
                        items.append(item)
                    out[name] = items
    except CorruptFileError:
        raise
    except (struct.error, ValueError, OSError) as exc:
        raise CorruptFileError(f"{path}: not a readable GGUF file ({type(exc).__name__})") from None
    return out


_SCALAR_FORMAT = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def output_header(src: GGUFFile, tensors: list[tuple[str, str]]) -> tuple[bytes, list[tuple[int, int]], int]:
    """A GGUF file like `src` holding `tensors` `[(name, source name)]` in that order: (its header, the
    (offset in src's file, nbytes) of each tensor's data in order, the alignment each is padded to).

    The header is src's own bytes up to the end of its metadata (only the tensor count changes: every
    metadata pair is kept as written), then a tensor-info record per tensor with its data offset, padded
    to the alignment, as gguf's GGUFWriter lays a file out. Why not GGUFWriter: it re-encodes the metadata
    from GGUFReader's numpy views and writes the tensors from a memory map, so memory grew with the
    file (1.25 GB for a 2.1 GB model); the conversion's writer copies the data in the kernel instead.
    """
    layout = src.layout
    order, align = layout.order, layout.alignment
    by_name = {t[0]: t for t in layout.tensors}
    with open(src.path, "rb") as f:
        head = bytearray(f.read(layout.metadata_end))
    if len(head) != layout.metadata_end:
        raise CorruptFileError(f"{src.path}: changed while it was read; run again")
    struct.pack_into(order + "Q", head, 8, len(tensors))  # magic, version, then the tensor count
    pieces, offset = [], 0
    for name, source in tensors:
        encoded = name.encode("utf-8")
        head += struct.pack(order + "Q", len(encoded)) + encoded + layout.descriptions[source]
        head += struct.pack(order + "Q", offset)
        nbytes, data_offset = by_name[source][3], by_name[source][4]
        pieces.append((data_offset, nbytes))
        offset += nbytes + (-nbytes % align)
    head += bytes(-len(head) % align)
    return bytes(head), pieces, align
