"""Readers: find a checkpoint's files and describe every stored tensor without loading it.

`open_checkpoint(path)` returns a `Checkpoint`: its layout, files, config, and a
`StoredTensor` per key (dtype, shape, byte size, file, storage identity).  Bytes
are read later, in bounded chunks, by `Checkpoint.iter_bytes`, so comparison and
conversion can stream from the same object.
"""

from __future__ import annotations

import functools
import gc
import json
import math
import operator
import os
import re
import stat
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Any, Iterator, NamedTuple, cast

from ..errors import CorruptFileError, InputError, UnsafePickleError, UnsupportedCheckpointError
from .safetensors_header import SafetensorsHeader, read_header

CHUNK_BYTES = 16 << 20
# Limits that real checkpoints never approach, checked before the expensive step (README, Guarantees).
# Configs are kilobytes (one with 22k ImageNet labels is 1.6 MB); indexes are about 100 bytes per tensor.
MAX_CONFIG_BYTES = 16 << 20  # config.json, params.json, adapter_config.json, modules.json
MAX_CONFIG_VALUES = 50_000  # JSON values in one config (22k ImageNet labels: 44,000): transformers copies each many times
MAX_INDEX_BYTES = 32 << 20  # DeepSeek-V3's 91,000-tensor index is 9 MB
MAX_JSON_DEPTH = 64  # real configs nest 3 or 4 levels; 900 levels break json.dumps and transformers
MAX_SHARDS = 4096  # per index (the largest public models have a few hundred)
MAX_TENSORS = 1_000_000  # per checkpoint (the largest public MoE models have about 150,000)

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"
TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# Keys under which training checkpoints keep the model's state dict (nanoGPT, torchtune, Lightning).
NESTED_STATE_DICT_KEYS = ("model", "state_dict", "model_state_dict", "module")


class StoredTensor(NamedTuple):  # a tuple, not a dataclass: a 90k-tensor index builds 90k of them
    key: str
    dtype: str  # safetensors' dtype names: BF16, F32...
    shape: tuple[int, ...]
    nbytes: int
    file: str  # path relative to the checkpoint's root folder
    storage: tuple[object, ...]  # equal for tensors that are one object on disk
    offset: int | None = None  # absolute byte offset (safetensors only)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class Checkpoint:
    path: Path  # what the user named
    root: Path  # folder the file names are relative to
    layout: str
    files: list[str]
    tensors: dict[str, StoredTensor]
    config: dict[str, Any] | None = None
    config_file: str | None = None
    aliases: dict[str, str] = field(default_factory=dict)  # dropped key -> kept key
    notes: list[str] = field(default_factory=list)
    file_metadata: dict[str, dict[str, str]] = field(default_factory=dict)  # safetensors __metadata__
    file_sizes: dict[str, int] = field(default_factory=dict)  # bytes of each safetensors file when it was read
    _torch: dict[str, Any] = field(default_factory=dict, repr=False)  # key -> tensor, for pickles
    _remote: Any = field(default=None, repr=False)  # hub.RemoteFiles, for Hub repos read over HTTP
    _pickles: dict[str, Any] = field(default_factory=dict, repr=False)  # file -> the whole loaded object
    _file_totals: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False)  # file -> (numel, bytes)

    def iter_bytes(self, key: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes | bytearray]:
        """Yield the stored bytes of `key` in chunks of at most `chunk_bytes`.

        Full chunks share one reused bytearray (compare or write each before asking
        for the next); bytearray == bytearray is a memcmp, memoryview == is per item.
        """
        info = self.tensors[key]
        if key in self._torch:
            flat = self._torch[key].contiguous().reshape(-1).view(_torch().uint8)
            for start in range(0, info.nbytes, chunk_bytes):
                yield flat[start : start + chunk_bytes].numpy().tobytes()
            return
        if self._remote is not None:
            yield from self._remote.iter_range(info.file, info.offset, info.nbytes, chunk_bytes)
            return
        buffer = bytearray(min(chunk_bytes, max(info.nbytes, 1)))
        view = memoryview(buffer)
        with open(self.root / info.file, "rb") as f:
            f.seek(cast(int, info.offset))  # set for every safetensors tensor
            remaining = info.nbytes
            while remaining:
                want = min(remaining, len(buffer))
                got = 0
                while got < want:
                    n = f.readinto(view[got:want])
                    if not n:
                        raise CorruptFileError(f"{self.root / info.file}: truncated while reading {key!r}")
                    got += n
                remaining -= want
                yield buffer if want == len(buffer) else buffer[:want]

    def add_safetensors_header(self, name: str, header: SafetensorsHeader, where: str) -> None:
        """Record the tensors of one safetensors file (local or remote) named `name`."""
        if len(self.tensors) + len(header.tensors) > MAX_TENSORS:
            raise CorruptFileError(f"{where}: the checkpoint holds over {MAX_TENSORS} tensors, far more than "
                                   "any real model; refusing it")
        self.file_sizes[name] = header.data_start + header.data_size
        if not self.tensors.keys().isdisjoint(header.tensors):
            key = min(self.tensors.keys() & header.tensors.keys())
            raise CorruptFileError(f"{where}: key {key!r} is also stored in {self.tensors[key].file}")
        self.tensors.update(_stored_tensors(name, header))
        self.files.append(name)
        self.file_metadata[name] = header.metadata
        self._file_totals[name] = (header.numel, header.data_size)  # tiled exactly: every tensor its own bytes
        for dropped, kept in header.metadata.items():
            # safetensors' save_model and tieconv.save record dropped shared names as `dropped -> kept`
            if dropped not in header.tensors and kept in header.tensors:
                self.aliases[dropped] = kept

    def totals(self) -> tuple[int, int, int]:
        """(stored parameters, parameters of distinct storage, bytes of distinct storage)."""
        if self._file_totals.keys() >= set(self.files):  # safetensors: summed per file, not per tensor
            return (sum(n for n, _ in self._file_totals.values()),) * 2 + (
                sum(b for _, b in self._file_totals.values()),)
        unique = {t.storage: t for t in self.tensors.values()}
        return (sum(t.numel for t in self.tensors.values()), sum(t.numel for t in unique.values()),
                sum(t.nbytes for t in unique.values()))

    def check_torch_loadable(self) -> None:
        """Refuse what cannot become torch tensors as stored (for `load_state_dict`), naming the file."""
        if self.layout == "gguf":
            raise UnsupportedCheckpointError(
                f"{self.path}: GGUF tensors are llama.cpp types (often quantized), not torch tensors; "
                "load_state_dict reads safetensors and torch checkpoints (inspect, tie and untie read GGUF)")
        for t in self.tensors.values():
            if t.key not in self._torch and t.dtype not in TORCH_DTYPE_OF:
                raise UnsupportedCheckpointError(
                    f"{self.root / t.file}: tensor {t.key!r} is stored as {t.dtype}, which torch has no dtype for; "
                    "load it with a library that reads that format")

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """`length` stored bytes of `key` from byte `start` (for sampled verification)."""
        info = self.tensors[key]
        length = max(0, min(length, info.nbytes - start))
        if key in self._torch:
            flat = self._torch[key].contiguous().reshape(-1).view(_torch().uint8)
            return cast(bytes, flat[start : start + length].numpy().tobytes())
        if self._remote is not None:
            return cast(bytes, self._remote.read(info.file, cast(int, info.offset) + start, length))
        with open(self.root / info.file, "rb") as f:
            return os.pread(f.fileno(), length, cast(int, info.offset) + start)

    def load_tensor(self, key: str) -> Any:
        """Return `key` as a torch tensor (memory-mapped where the format allows)."""
        if key in self._torch:
            return self._torch[key]
        if self.layout == "gguf":
            from . import gguf_file

            return gguf_file.load_tensor(self.root / self.files[0], key)
        if self._remote is not None:
            torch = _torch()
            info = self.tensors[key]
            dtype = getattr(torch, TORCH_DTYPE_OF[info.dtype])
            data = bytearray(b"".join(self.iter_bytes(key)))
            return torch.frombuffer(data, dtype=dtype).reshape(info.shape) if data else torch.empty(info.shape, dtype=dtype)
        from safetensors import safe_open

        info = self.tensors[key]
        with safe_open(str(self.root / info.file), framework="pt") as f:
            return f.get_tensor(key)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a large index is read: its 90k entries are tuples that all
    stay alive, and the collector, run every few hundred allocations, walks them again and again
    (about a tenth of a DeepSeek-V3 inspect).  Tuples of strings and ints form no cycles to collect."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


_new_stored = functools.partial(tuple.__new__, StoredTensor)  # called by map(): no Python frame per tensor


def _stored_tensors(name: str, header: SafetensorsHeader) -> Iterator[tuple[str, StoredTensor]]:
    """(key, StoredTensor) for each tensor of the file `name`, built column-wise by map() and zip(), which
    run in C: a 90k-tensor index spends tens of milliseconds here instead of a quarter second."""
    if not header.tensors:
        return iter(())
    keys = list(header.tensors)
    dtypes, shapes, begins, ends = zip(*header.tensors.values())
    nbytes = map(operator.sub, ends, begins)
    storages = zip(repeat(name), begins, ends)
    offsets = map(operator.add, repeat(header.data_start), begins)
    return zip(keys, map(_new_stored, zip(keys, dtypes, shapes, nbytes, repeat(name), storages, offsets)))


def _torch() -> Any:
    import torch

    return torch


def read_json(path: Path, what: str, max_bytes: int = MAX_CONFIG_BYTES,
              max_values: int | None = MAX_CONFIG_VALUES) -> Any:
    """Read a small JSON file strictly; errors name the file and never quote its content.

    Refused before parsing: more than `max_bytes`. After parsing (an iterative walk, so a deep
    document cannot exhaust the stack): nesting deeper than MAX_JSON_DEPTH, more than `max_values`
    values, strings no UTF-8 file can hold (lone surrogates, which JSON's \\u escapes allow).
    """
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise CorruptFileError(f"{path}: {size} bytes is far too large for a {what} (limit {max_bytes}); "
                                   "refusing to parse it")
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
        if len(raw) > max_bytes:
            raise CorruptFileError(f"{path}: over {max_bytes} bytes, far too large for a {what}; refusing to parse it")
        doc = json.loads(raw.decode("utf-8"))
    except CorruptFileError:
        raise
    except RecursionError:
        raise CorruptFileError(f"{path}: {what} JSON is nested too deeply (limit {MAX_JSON_DEPTH} levels)") from None
    except UnicodeDecodeError as exc:
        raise CorruptFileError(f"{path}: {what} is not UTF-8 (byte {exc.start}); fix or re-download it") from None
    except ValueError as exc:
        # JSONDecodeError's message names the position only; other ValueErrors may quote the text
        where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise CorruptFileError(f"{path}: {what} is not valid JSON{where}; fix or re-download it") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    _check_json_shape(doc, path, what, max_values, raw)
    return doc


def _check_json_shape(doc: Any, path: Path, what: str, max_values: int | None, raw: bytes | None = None) -> None:
    """Depth, value count and string checks of a parsed JSON document.

    Written for a 9 MB index (90k keys) as much as for a config: only containers are walked in
    Python; their leaves are counted with len() and typed with set(map(type, ...)), both in C.
    A lone surrogate can only come from a `\\uD800`-`\\uDFFF` escape (the UTF-8 decoder refuses encoded
    surrogates), so when `raw`, the document's bytes, holds no such escape the strings are not looked at.
    """
    check_strings = raw is None or _SURROGATE_ESCAPE.search(raw) is not None
    if check_strings and isinstance(doc, str):
        _check_string(doc, path, what)
    values = 1
    stack = [(doc, 1)] if isinstance(doc, (dict, list)) else []
    while stack:
        value, depth = stack.pop()
        if not value:
            continue
        items = list(value.values()) if isinstance(value, dict) else value
        if depth + 1 > MAX_JSON_DEPTH:
            raise CorruptFileError(f"{path}: {what} nests deeper than {MAX_JSON_DEPTH} levels; refusing it")
        values += len(items)
        if max_values is not None and values > max_values:
            raise CorruptFileError(f"{path}: {what} holds over {max_values} values, far more than a real one; "
                                   "refusing it")
        kinds = set(map(type, items))
        if check_strings:
            if isinstance(value, dict):
                for key in value:
                    _check_string(key, path, what)
            if str in kinds:
                for item in items:
                    if type(item) is str:
                        _check_string(item, path, what)
        if dict in kinds or list in kinds:
            stack.extend((item, depth + 1) for item in items if type(item) in (dict, list))


_SURROGATE_ESCAPE = re.compile(rb"\\[uU][dD][89a-fA-F]")  # may match an escaped backslash too: then we look closer


def _check_string(value: str, path: Path, what: str) -> None:
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise CorruptFileError(f"{path}: {what} holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not "
                                   "text; fix the file") from None


def read_member_json(root: Path, name: str, what: str, **limits: Any) -> Any:
    """`read_json` of the file `name` in the model folder `root`, under the same containment rule as shards."""
    return read_json(safe_member(root, name, what), what, **limits)


def _in_hf_cache_repo(root: Path, target: Path) -> bool:
    """True when `root` is a Hugging Face cache snapshot and `target` lies in the same repo's blobs/."""
    parts = root.absolute().parts
    if "snapshots" not in parts:
        return False
    repo = Path(*parts[: len(parts) - 1 - parts[::-1].index("snapshots")])
    try:
        target.relative_to(repo.resolve() / "blobs")
        return True
    except ValueError:
        return False


def safe_member(root: Path, name: str, what: str) -> Path:
    """Resolve `name` inside `root`, refusing `..`, absolute paths and links that leave the folder."""
    shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:77] + "..."  # a name, never a file's bulk
    if not isinstance(name, str) or not name or "\x00" in name:
        raise CorruptFileError(f"{root}: {what} names an invalid file {shown}")
    pure = Path(name)
    if pure.is_absolute() or ".." in pure.parts or "\\" in name:
        raise CorruptFileError(f"{root}: {what} names {shown}, outside the model folder; refusing it")
    if len(name.encode("utf-8", "surrogatepass")) > 4000 or any(len(p.encode("utf-8", "surrogatepass")) > 255
                                                                for p in pure.parts):
        raise CorruptFileError(f"{root}: {what} names {shown}, longer than any filesystem allows; refusing it")
    path = root / pure
    real = path.resolve()
    try:
        real.relative_to(root.resolve())
    except ValueError:
        if not _in_hf_cache_repo(root, real):
            raise CorruptFileError(
                f"{path}: is a link to {real}, outside the model folder; copy the file in instead"
            ) from None
    return path


# ---------------------------------------------------------------- safetensors


def _add_safetensors_file(ckpt: Checkpoint, name: str) -> SafetensorsHeader:
    path = safe_member(ckpt.root, name, "the index")
    if not path.is_file():
        raise InputError(f"{path}: shard named by the index is missing; re-download the checkpoint")
    header = read_header(path)
    ckpt.add_safetensors_header(name, header, str(path))
    return header


def read_index_doc(root: Path, name: str) -> Any:
    """The parsed index file `name` of the folder `root` (contained, size-limited)."""
    return read_member_json(root, name, "index", max_bytes=MAX_INDEX_BYTES, max_values=None)


def _read_index(root: Path, name: str) -> tuple[dict[str, str], list[str]]:
    """The index's weight map and its shard names in order of first mention, every name validated."""
    where = root / name
    doc = read_index_doc(root, name)
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    # set(map(type, ...)) runs in C: the 90k values of DeepSeek-V3's index cost no Python loop
    if not isinstance(weight_map, dict) or not set(map(type, weight_map.values())) <= {str}:
        raise CorruptFileError(f"{where}: index has no valid weight_map; re-download the checkpoint")
    if len(weight_map) > MAX_TENSORS:
        raise CorruptFileError(f"{where}: index names {len(weight_map)} tensors, over the limit of {MAX_TENSORS}")
    shards = list(dict.fromkeys(weight_map.values()))
    if len(shards) > MAX_SHARDS:
        raise CorruptFileError(f"{where}: index names {len(shards)} shards, over the limit of {MAX_SHARDS}")
    for shard in shards:  # validate every name before opening any: once per shard, not per tensor
        safe_member(root, shard, f"index {name}")
    return weight_map, shards


def _check_index_holds(root: Path, weight_map: dict[str, str], stored_in: dict[str, str]) -> None:
    """Refuse an index that maps a key to a shard not holding it (`stored_in`: key -> the shard that does)."""
    if weight_map.items() <= stored_in.items():  # a set comparison of the two item views, in C
        return
    missing: dict[str, list[str]] = {}
    for key, shard in weight_map.items():
        if stored_in.get(key) != shard:
            missing.setdefault(shard, []).append(key)
    shard, keys = next(iter(missing.items()))
    raise CorruptFileError(f"{root / shard}: the index maps {len(keys)} key(s) to this shard that it does not hold, "
                           f"e.g. {min(keys)!r}")


# ---------------------------------------------------------------- pickles

_TORCH_DTYPES = {
    "float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64", "int8": "I8", "uint8": "U8",
    "int16": "I16", "int32": "I32", "int64": "I64", "bool": "BOOL", "uint16": "U16", "uint32": "U32",
    "uint64": "U64", "complex64": "C64", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
    "float8_e4m3fnuz": "F8_E4M3FNUZ", "float8_e5m2fnuz": "F8_E5M2FNUZ", "float8_e8m0fnu": "F8_E8M0",
}


TORCH_DTYPE_OF = {v: k for k, v in _TORCH_DTYPES.items()}  # safetensors name -> torch attribute


def torch_dtype_name(dtype: object) -> str:
    name = str(dtype).removeprefix("torch.")
    return _TORCH_DTYPES.get(name, name.upper())


def load_pickle(path: Path, notes: list[str] | None = None) -> Any:
    """`torch.load` with `weights_only=True`, memory-mapped when the file is a zip archive."""
    import pickle
    import zipfile

    from .pickle_scan import check_torch_file

    check_torch_file(path)  # before importing torch: a refusal costs milliseconds
    torch = _torch()
    mmap = zipfile.is_zipfile(path)
    if not mmap and notes is not None:
        notes.append(f"{path.name} is a legacy (non-zip) pickle: read whole into memory, it cannot be memory-mapped")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        # torch's weights-only unpickler raises UnpicklingError both for globals it will not
        # import (code) and for opcodes it does not know (garbage); only the former is "unsafe"
        if "global" in str(exc).lower():
            raise UnsafePickleError(
                f"{path}: refused: this pickle needs arbitrary code to load, which tieconv never runs "
                f"({_unsafe_detail(str(exc))}); ask for a safetensors file"
            ) from None
        raise CorruptFileError(f"{path}: not a readable torch checkpoint ({first})") from None
    except Exception as exc:  # noqa: BLE001 - anything torch raises on a hostile file is bad input
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CorruptFileError(f"{path}: not a readable torch checkpoint ({detail[:200]})") from None


def _unsafe_detail(message: str) -> str:
    for line in message.splitlines():
        if "GLOBAL" in line or "Unsupported" in line:
            return line.strip()[:200]
    return "unsupported global"


def _find_state_dict(obj: Any, path: Path) -> tuple[dict[str, Any], str]:
    torch = _torch()

    def tensors_of(d: dict[Any, Any]) -> dict[str, Any]:
        return {k: v for k, v in d.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}

    if isinstance(obj, dict):
        found = tensors_of(obj)
        if found and len(found) >= len(obj) / 2:
            return found, ""
        for key in NESTED_STATE_DICT_KEYS:
            inner = obj.get(key)
            if isinstance(inner, dict) and tensors_of(inner):
                return tensors_of(inner), key
        if found:
            return found, ""
    raise InputError(f"{path}: holds no state dict of tensors (looked at the top level and {NESTED_STATE_DICT_KEYS})")


EXPANDED_VIEW_BYTES = 16 << 20  # a broadcast view may claim more than its storage, up to this much


def _check_plain_tensor(path: Path, key: str, t: Any) -> None:
    """Refuse tensors tieconv cannot stream as bytes, before anything asks for their size or bytes.

    A view with stride 0 claims more elements than its storage holds (a 2 KB file can claim 4 TiB):
    materialising it to learn or copy its bytes would allocate all of them.
    """
    torch = _torch()
    kind = ("sparse" if t.layout != torch.strided else "nested" if t.is_nested
            else "quantized" if t.is_quantized else f"on the {t.device.type} device" if t.device.type != "cpu" else "")
    if kind:
        raise UnsupportedCheckpointError(f"{path}: tensor {key!r} is {kind}; tieconv reads plain dense CPU tensors "
                                         "(save it with .to_dense() / .cpu() / real values)")
    claimed = t.numel() * t.element_size()
    held = t.untyped_storage().nbytes()
    if claimed > max(held, EXPANDED_VIEW_BYTES):
        raise CorruptFileError(f"{path}: tensor {key!r} claims {claimed} bytes over a storage of {held} "
                               "(a stride-0 or overlapping view); refusing to materialise it")


def _add_torch_file(ckpt: Checkpoint, name: str) -> None:
    path = safe_member(ckpt.root, name, "the index")
    if not path.is_file():
        raise InputError(f"{path}: shard named by the index is missing; re-download the checkpoint")
    obj = load_pickle(path, ckpt.notes)
    ckpt._pickles[name] = obj  # kept (memory-mapped) so a conversion can rewrite the wrapper without a reload
    state_dict, nested = _find_state_dict(obj, path)
    if nested:
        ckpt.notes.append(f"{name}: state dict read from the training checkpoint's {nested!r} entry")
    if len(ckpt.tensors) + len(state_dict) > MAX_TENSORS:
        raise CorruptFileError(f"{path}: the checkpoint holds over {MAX_TENSORS} tensors; refusing it")
    for key, t in state_dict.items():
        if key in ckpt.tensors:
            raise CorruptFileError(f"{path}: key {key!r} is also stored in {ckpt.tensors[key].file}")
        _check_plain_tensor(path, key, t)
        storage = (name, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.stride()), tuple(t.shape))
        ckpt.tensors[key] = StoredTensor(
            key, torch_dtype_name(t.dtype), tuple(t.shape), t.numel() * t.element_size(), name, storage
        )
        ckpt._torch[key] = t
    ckpt.files.append(name)


# ---------------------------------------------------------------- entry point

_NAME = re.compile(r"[\w.\-/~]+")  # a repo id or a path, as PEFT writes base_model_name_or_path

LOOKED_FOR = (SAFETENSORS_INDEX, SAFETENSORS_SINGLE, BIN_INDEX, BIN_SINGLE, "a single *.safetensors / *.bin / *.pt / *.pth")


def open_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Describe the checkpoint at `path` (a folder or a single file) without loading its tensors.

    Example:
        >>> ckpt = open_checkpoint("fixtures/llama-tied")
        >>> ckpt.layout, sorted(ckpt.tensors)[:1]
        ('hf-safetensors', ['model.embed_tokens.weight'])
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise InputError(f"{path}: no such file or folder") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        # never opened: reading a FIFO would block, a device would stream forever
        raise InputError(f"{path}: not a regular file or folder (a device, FIFO or socket); name a checkpoint")
    if path.is_file():
        return _open_file(path)
    return _open_folder(path)


def _open_file(path: Path) -> Checkpoint:
    root = path.parent
    name = path.name
    if name.endswith(".safetensors"):
        ckpt = Checkpoint(path, root, "safetensors-file", [], {})
        _add_safetensors_file(ckpt, name)
        return ckpt
    if name.endswith(TORCH_SUFFIXES):
        ckpt = Checkpoint(path, root, "torch-file", [], {})
        params = root / "params.json"
        if params.is_file():  # read later; a link out of the folder is refused before anything is loaded
            safe_member(root, "params.json", "folder")
        _add_torch_file(ckpt, name)
        if params.is_file():
            ckpt.config_file = "params.json"
            ckpt.notes.append("params.json found beside the file (Meta/TorchChat layout)")
        return ckpt
    if name.endswith(".gguf"):
        from . import gguf_file

        ckpt = Checkpoint(path, root, "gguf", [name], {})
        for key, dtype, shape, nbytes, offset in gguf_file.read_tensors(path):
            if key in ckpt.tensors:
                raise CorruptFileError(f"{path}: tensor {key!r} appears twice")
            ckpt.tensors[key] = StoredTensor(key, dtype, shape, nbytes, name, (name, offset), offset)
        ckpt.notes.append("GGUF carries no tie flag: llama.cpp uses token_embd.weight when output.weight is absent")
        rule = gguf_file.llama_cpp_head_rule(gguf_file.architecture(path))
        if rule:
            ckpt.notes.append(f"except here: {rule}; keep output.weight")
        return ckpt
    raise InputError(f"{path}: unknown file type; expected .safetensors, .bin, .pt, .pth, .gguf or a model folder")


def _open_folder(root: Path, _inside_modules: bool = False) -> Checkpoint:
    if (root / "adapter_config.json").is_file() and not any(
        (root / n).is_file() for n in (SAFETENSORS_SINGLE, SAFETENSORS_INDEX, BIN_SINGLE, BIN_INDEX)
    ):
        adapter = read_member_json(root, "adapter_config.json", "adapter config")
        base = adapter.get("base_model_name_or_path") if isinstance(adapter, dict) else None
        # the base model is named only when it looks like a repo id or a path: never quote other content
        named = isinstance(base, str) and len(base) <= 200 and _NAME.fullmatch(base)
        raise UnsupportedCheckpointError(
            f"{root}: is a PEFT adapter, which holds no full embedding or head; inspect the base model"
            + (f" ({base})" if named else "")
            + " or merge the adapter first"
        )
    config = None
    config_file = None
    if (root / "config.json").is_file():
        config_file = "config.json"
        config = read_member_json(root, "config.json", "config")
        if not isinstance(config, dict):
            raise CorruptFileError(f"{root / 'config.json'}: config is not a JSON object")

    def make(layout: str) -> Checkpoint:
        return Checkpoint(root, root, layout, [], {}, config, config_file)

    if (root / SAFETENSORS_INDEX).is_file():
        ckpt = make("hf-safetensors-sharded")
        weight_map, shards = _read_index(root, SAFETENSORS_INDEX)
        stored_in: dict[str, str] = {}
        with _collector_paused():
            for shard in shards:
                stored_in.update(dict.fromkeys(_add_safetensors_file(ckpt, shard).tensors, shard))
        _check_index_holds(root, weight_map, stored_in)
        return ckpt
    if (root / SAFETENSORS_SINGLE).is_file():
        ckpt = make("hf-safetensors")
        _add_safetensors_file(ckpt, SAFETENSORS_SINGLE)
        return ckpt
    if (root / BIN_INDEX).is_file():
        ckpt = make("hf-bin-sharded")
        weight_map, shards = _read_index(root, BIN_INDEX)
        for shard in shards:
            _add_torch_file(ckpt, shard)
        _check_index_holds(root, weight_map, {key: t.file for key, t in ckpt.tensors.items()})
        return ckpt
    if (root / BIN_SINGLE).is_file():
        ckpt = make("hf-bin")
        _add_torch_file(ckpt, BIN_SINGLE)
        return ckpt
    # Sentence-transformers: the transformer module may live in a subfolder named by modules.json.
    if (root / "modules.json").is_file() and not _inside_modules:
        modules = read_member_json(root, "modules.json", "modules.json")
        for module in modules if isinstance(modules, list) else []:
            sub = module.get("path") if isinstance(module, dict) else None
            if not isinstance(sub, str) or not sub:
                continue
            folder = safe_member(root, sub, "modules.json")  # before any look at the disk
            if (folder / "config.json").is_file():
                if folder.resolve() == root.resolve():
                    continue  # a module at "." is the folder itself, already looked at above
                inner = _open_folder(folder, _inside_modules=True)
                inner.path = root
                inner.notes.append(f"sentence-transformers folder: model read from {sub}/")
                return inner
    # Meta / TorchChat / nanoGPT: one .pth / .pt file in the folder.
    singles = sorted(
        p.name for p in root.iterdir() if p.is_file() and p.name.endswith((".pth", ".pt", ".safetensors", ".bin"))
    )
    if len(singles) == 1:
        ckpt = _open_file(root / singles[0])
        ckpt.path = root  # the user named the folder: conversions write a folder too
        return ckpt
    if len(singles) > 1:
        raise InputError(
            f"{root}: holds several checkpoint files ({', '.join(singles[:4])}); name one of them"
        )
    raise InputError(f"{root}: no weights found (looked for {', '.join(LOOKED_FOR)})")
