"""GGUF (llama.cpp) files through the `gguf` package: read tensor descriptions, rewrite with tensors dropped or added.

GGUF carries no tie flag; llama.cpp falls back to `token_embd.weight` when `output.weight`
is absent, so the no-config rule of `inspect` applies.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import CorruptFileError, OutputError, UnsupportedCheckpointError
from .tensor_file import StoredTensor, TensorFile, read_file_range, stream_file_range

if TYPE_CHECKING:
    import mmap

EMBED = "token_embd.weight"
HEAD = "output.weight"


# Limits that real files never approach (the largest vocabularies hold 262,144 tokens plus merges).
MAX_GGUF_STRINGS = 1_500_000  # metadata strings, array items included
MAX_GGUF_ITEMS = 64_000_000  # metadata values of every type
MAX_GGUF_TENSORS = 200_000
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
        for key, dtype, shape, nbytes, offset in read_tensors(path):
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
        return read_file_range(self.path, (info.offset or 0) + start, length)

    def load_tensor(self, info: StoredTensor) -> Any:
        return load_tensor(self.path, info.key)

    def check_torch_loadable(self, where: str) -> None:
        raise UnsupportedCheckpointError(
            f"{where}: GGUF tensors are llama.cpp types (often quantized), not torch tensors; "
            "load_state_dict reads safetensors and torch checkpoints (inspect, tie and untie read GGUF)")


def read_tensors(path: Path) -> list[tuple[str, str, tuple[int, ...], int, int]]:
    """[(name, type name, shape, nbytes, absolute data offset)] of the GGUF file at `path`.

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


def _read_tensors(data: mmap.mmap, size: int, path: Path) -> list[tuple[str, str, tuple[int, ...], int, int]]:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    if data[:4] != b"GGUF":
        raise CorruptFileError(f"{path}: not a GGUF file (no GGUF magic)")
    order = "<" if struct.unpack_from("<I", data, 4)[0] & 0xFFFF else ">"  # as GGUFReader tells byte order
    version, n_tensors, n_kv = struct.unpack_from(order + "IQQ", data, 4)
    if version not in (2, 3):
        raise CorruptFileError(f"{path}: GGUF version {version} is not supported (2 or 3)")
    if n_tensors > MAX_GGUF_TENSORS or n_kv > MAX_GGUF_ITEMS:
        raise CorruptFileError(f"{path}: claims {n_tensors} tensors and {n_kv} metadata entries, over the limits "
                               f"({MAX_GGUF_TENSORS}, {MAX_GGUF_ITEMS})")
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

    for _ in range(n_kv):
        key_end = skip_string(pos)
        key = bytes(data[pos + 8 : key_end])
        kind = u32(key_end)
        pos = key_end + 4
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
                for _ in range(count):
                    pos = skip_string(pos)
            elif sub in _SCALAR_BYTES:
                pos += count * _SCALAR_BYTES[sub]
            else:  # arrays of arrays: gguf's writer never nests them
                raise CorruptFileError(f"{path}: metadata array of type {sub} is not supported")
        elif kind in _SCALAR_BYTES:
            if key == b"general.alignment" and kind == 4:
                alignment = u32(pos)
            pos += _SCALAR_BYTES[kind]
        else:
            raise CorruptFileError(f"{path}: metadata value of unknown type {kind}")
        if strings > MAX_GGUF_STRINGS or items > MAX_GGUF_ITEMS:
            raise too_much()
        if pos > size:
            raise CorruptFileError(f"{path}: metadata runs past the end of the file")
    if alignment == 0 or alignment & (alignment - 1):
        raise CorruptFileError(f"{path}: general.alignment {alignment} is not a power of two")

    infos = []
    for _ in range(n_tensors):
        name_end = skip_string(pos)
        name = bytes(data[pos + 8 : name_end]).decode("utf-8")
        n_dims = u32(name_end)
        if n_dims > 8:
            raise CorruptFileError(f"{path}: tensor {name[:80]!r} has {n_dims} dimensions (GGUF allows 4)")
        dims = struct.unpack_from(order + "Q" * n_dims, data, name_end + 4)
        type_id, offset = struct.unpack_from(order + "IQ", data, name_end + 4 + 8 * n_dims)
        pos = name_end + 4 + 8 * n_dims + 12
        try:
            tensor_type = GGMLQuantizationType(type_id)
            block_size, type_size = GGML_QUANT_SIZES[tensor_type]
        except (ValueError, KeyError):
            raise CorruptFileError(f"{path}: tensor {name[:80]!r} has unknown type {type_id}") from None
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
    return out


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


def write(src: Path, dst: Path, tensors: list[tuple[str, str]]) -> None:
    """Write `dst`: every metadata field of `src` unchanged, tensors `[(name, source name)]` in that order."""
    import gguf

    reader = gguf.GGUFReader(src, "r")
    by_name = {t.name: t for t in reader.tensors}
    arch_field = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    arch = arch_field.contents() if arch_field is not None else "llama"
    writer = gguf.GGUFWriter(dst, arch=arch, endianess=reader.endianess)
    try:
        # the metadata copy follows gguf's own gguf_new_metadata script
        for field in reader.fields.values():
            if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
                continue
            if field.name == gguf.Keys.General.ALIGNMENT:
                # add_key_value would write the field but keep padding to the default 32 bytes: readers
                # then look for the data at the wrong offsets
                writer.add_custom_alignment(int(field.contents()))
                continue
            val_type = field.types[0]
            sub_type = field.types[-1] if val_type == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), val_type, sub_type=sub_type)
        for name, source in tensors:
            t = by_name[source]
            writer.add_tensor_info(name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for _, source in tensors:
            writer.write_tensor_data(by_name[source].data, tensor_endianess=reader.endianess)
    except OSError as exc:
        if exc.errno is None:  # numpy's tofile reports a short write without an errno (EFBIG, ENOSPC)
            raise OutputError(f"{dst.name}: the write stopped short ({exc}): the disk is full or a file size limit "
                              "was reached; free space (or raise the limit) and retry") from None
        raise
    except Exception as exc:  # noqa: BLE001
        raise OutputError(f"{dst}: could not write GGUF ({exc})") from None
    finally:
        writer.close()
