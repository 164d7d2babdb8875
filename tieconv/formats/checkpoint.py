"""Layouts: find a checkpoint's weight files and map every stored key to the file that holds it.

`open_checkpoint(path)` returns a `Checkpoint`: its layout (a folder with one file or a sharded
index, a single file, a Hub repo: `hub.py`), its config, and one backend per weight file, chosen by
the file's format (`tensor_file.TensorFile`: `SafetensorsFile`, `TorchPickle`, `GGUFFile`,
`RemoteSafetensors`).  `Checkpoint.tensors` describes each key without loading it; bytes are read
later, in bounded chunks, by `Checkpoint.iter_bytes`, so comparison and conversion stream from the
same object whatever the format.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CorruptFileError, InputError, UnsupportedCheckpointError
from .. import collector
from . import file_cache
from .safetensors_file import SafetensorsFile
from .safetensors_header import read_header
from .tensor_file import CHUNK_BYTES, MAX_TENSORS, StoredTensor, TensorFile, TensorTable
from .torch_pickle import NESTED_STATE_DICT_KEYS, TORCH_DTYPE_OF, TorchPickle, load_pickle, torch_dtype_name

if TYPE_CHECKING:
    from .hub import RemoteFiles

__all__ = ["CHUNK_BYTES", "MAX_TENSORS", "NESTED_STATE_DICT_KEYS", "TORCH_DTYPE_OF", "Checkpoint", "StoredTensor",
           "load_pickle", "open_checkpoint", "torch_dtype_name"]

# Limits that real checkpoints never approach, checked before the expensive step (README, Guarantees).
# Configs are kilobytes (one with 22k ImageNet labels is 1.6 MB); indexes are about 100 bytes per tensor.
MAX_CONFIG_BYTES = 16 << 20  # config.json, params.json, adapter_config.json, modules.json
MAX_CONFIG_VALUES = 50_000  # JSON values in one config (22k ImageNet labels: 44,000): transformers copies each many times
MAX_INDEX_BYTES = 32 << 20  # DeepSeek-V3's 91,000-tensor index is 9 MB
MAX_JSON_DEPTH = 64  # real configs nest 3 or 4 levels; 900 levels break json.dumps and transformers
MAX_SHARDS = 4096  # per index (the largest public models have a few hundred)
CACHED_INDEX_BYTES = 64 << 10  # a smaller index parses in less time than a cache file takes to read

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"
TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


@dataclass
class Checkpoint:
    """A checkpoint: where it is, its layout and config, and a backend per weight file (`backends`,
    in the order read) to which `tensors` maps every stored key."""

    path: Path  # what the user named
    root: Path  # folder the file names are relative to
    layout: str
    config: dict[str, Any] | None = None
    config_file: str | None = None
    aliases: dict[str, str] = field(default_factory=dict)  # dropped key -> kept key
    index_metadata: dict[str, Any] = field(default_factory=dict)  # a sharded checkpoint's index "metadata"
    notes: list[str] = field(default_factory=list)
    remote: RemoteFiles | None = field(default=None, repr=False)  # a Hub repo whose files are read over HTTP
    files: list[str] = field(default_factory=list)  # the weight files, relative to `root`, in the order read
    backends: dict[str, TensorFile] = field(default_factory=dict, repr=False)  # file name -> its reader
    tensors: TensorTable = field(default_factory=TensorTable, repr=False)

    @property
    def file_metadata(self) -> dict[str, dict[str, str]]:
        """Each safetensors file's `__metadata__`."""
        return {name: b.metadata for name, b in self.backends.items() if b.writes_as == "safetensors"}

    @property
    def file_sizes(self) -> dict[str, int]:
        """Bytes of each safetensors file when it was read (a copy checks the file has not shrunk since)."""
        return {name: size for name, b in self.backends.items() if (size := b.size) is not None}

    def add_file(self, backend: TensorFile, where: str) -> None:
        """Map the tensors of `backend`'s file to it (`where` names the file in errors)."""
        self.tensors.add(backend, where)
        self.backends[backend.name] = backend
        self.files.append(backend.name)

    def tensors_in(self, name: str) -> list[StoredTensor]:
        """The tensors of the file `name`, in the order of their bytes in it."""
        return sorted(self.backends[name].tensors.values(), key=lambda t: t.offset or 0)

    def record_aliases(self, metadata: Mapping[str, object]) -> None:
        """Read the `dropped -> kept` pairs that safetensors' `save_model` and huggingface_hub's
        `save_torch_state_dict` write for names they dropped as shared: a file's metadata, or for a sharded
        save only the index's.  A pair counts when `dropped` is not stored and `kept` is."""
        for dropped, kept in metadata.items():
            if isinstance(kept, str) and dropped not in self.tensors and kept in self.tensors:
                self.aliases[dropped] = kept

    def iter_bytes(self, key: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes | bytearray]:
        """Yield the stored bytes of `key` in chunks of at most `chunk_bytes`.

        Full chunks may share one reused bytearray: compare or write each before asking for the next.
        """
        return self.tensors.file_of(key).iter_bytes(self.tensors[key], chunk_bytes)

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """`length` stored bytes of `key` from byte `start` (for sampled verification)."""
        info = self.tensors[key]
        return self.tensors.file_of(key).read_range(info, start, max(0, min(length, info.nbytes - start)))

    def load_tensor(self, key: str) -> Any:
        """Return `key` as a torch tensor (memory-mapped where the format allows)."""
        return self.tensors.file_of(key).load_tensor(self.tensors[key])

    def load_all(self) -> dict[str, Any]:
        """Every stored tensor as a torch tensor, each file opened once."""
        out: dict[str, Any] = {}
        for backend in self.backends.values():
            out.update(backend.load_all())
        return out

    def streams_values(self, key: str) -> bool:
        """True when `iter_bytes(key)` reads values of a torch dtype as stored, without loading the tensor."""
        return self.tensors.file_of(key).streams_values

    def torch_object(self) -> Any:
        """Everything the one torch file of a `torch-file` checkpoint holds (a training checkpoint's dict,
        say), kept memory-mapped; None for other layouts."""
        backend = self.backends.get(self.files[0]) if self.layout == "torch-file" else None
        return backend.obj if isinstance(backend, TorchPickle) else None

    def totals(self) -> tuple[int, int, int]:
        """(stored parameters, parameters of distinct storage, bytes of distinct storage), summed per file."""
        stored = unique = nbytes = 0
        for backend in self.backends.values():
            s, u, b = backend.totals()
            stored, unique, nbytes = stored + s, unique + u, nbytes + b
        return stored, unique, nbytes

    def check_torch_loadable(self) -> None:
        """Refuse what cannot become torch tensors as stored (for `load_state_dict`), naming the file."""
        for backend in self.backends.values():
            backend.check_torch_loadable(str(self.path))


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


# ---------------------------------------------------------------- weight files: the backend of each format


def read_weight_file(ckpt: Checkpoint, name: str, path: Path | None = None) -> TensorFile:
    """Read the weight file `name` of `ckpt` with the backend of its format and add it (`path`: already
    validated by `safe_member`).  The one place that maps a file name to a format."""
    path = path or safe_member(ckpt.root, name, "the index")
    if not path.is_file():
        raise InputError(f"{path}: shard named by the index is missing; re-download the checkpoint")
    backend: TensorFile
    if name.endswith(".safetensors"):
        backend = SafetensorsFile(name, path, read_header(path))
    elif name.endswith(TORCH_SUFFIXES):
        backend = TorchPickle(name, path, ckpt.notes)
    elif name.endswith(".gguf"):
        from .gguf_file import GGUFFile

        backend = GGUFFile(name, path)
    else:
        raise InputError(f"{path}: unknown file type; expected .safetensors, .bin, .pt, .pth, .gguf or a model folder")
    ckpt.add_file(backend, str(path))
    return backend


# ---------------------------------------------------------------- indexes


def read_index_doc(root: Path, name: str) -> Any:
    """The parsed index file `name` of the folder `root` (contained, size-limited)."""
    return read_member_json(root, name, "index", max_bytes=MAX_INDEX_BYTES, max_values=None)


def _read_index(root: Path, name: str) -> tuple[dict[str, str], dict[str, Path], dict[str, Any]]:
    """The index's weight map, its shards (name -> validated path) in order of first mention, and its
    metadata (an empty dict when it has none)."""
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
    # validate every name before opening any: once per shard, not per tensor
    paths = {shard: safe_member(root, shard, f"index {name}") for shard in shards}
    metadata = doc.get("metadata")
    return weight_map, paths, metadata if isinstance(metadata, dict) else {}


def check_index_holds(ckpt: Checkpoint, weight_map: dict[str, str], where: str) -> None:
    """Refuse an index that maps a key to a shard not holding it (`where`: the folder or repo, for errors)."""
    stored_in: dict[str, str] = {}
    for backend in ckpt.backends.values():
        stored_in.update(dict.fromkeys(backend.keys(), backend.name))  # in C: 90k keys cost no Python loop
    if weight_map.items() <= stored_in.items():  # a set comparison of the two item views, in C
        return
    missing: dict[str, list[str]] = {}
    for key, shard in weight_map.items():
        if stored_in.get(key) != shard:
            missing.setdefault(shard, []).append(key)
    shard, keys = next(iter(missing.items()))
    raise CorruptFileError(f"{where}/{shard}: the index maps {len(keys)} key(s) to this shard that it does not hold, "
                           f"e.g. {min(keys)!r}")


# ---------------------------------------------------------------- entry point

_NAME = re.compile(r"[\w.\-/~]+")  # a repo id or a path, as PEFT writes base_model_name_or_path

LOOKED_FOR = (SAFETENSORS_INDEX, SAFETENSORS_SINGLE, BIN_INDEX, BIN_SINGLE, "a single *.safetensors / *.bin / *.pt / *.pth")
HF_LAYOUTS = (  # (file, layout): the first present wins, as transformers' from_pretrained looks
    (SAFETENSORS_INDEX, "hf-safetensors-sharded"), (SAFETENSORS_SINGLE, "hf-safetensors"),
    (BIN_INDEX, "hf-bin-sharded"), (BIN_SINGLE, "hf-bin"),
)


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
    root, name = path.parent, path.name
    if name.endswith(".safetensors"):
        ckpt = Checkpoint(path, root, "safetensors-file")
        read_weight_file(ckpt, name)
    elif name.endswith(TORCH_SUFFIXES):
        ckpt = Checkpoint(path, root, "torch-file")
        params = root / "params.json"
        if params.is_file():  # read later; a link out of the folder is refused before anything is loaded
            safe_member(root, "params.json", "folder")
        read_weight_file(ckpt, name)
        if params.is_file():
            ckpt.config_file = "params.json"
            ckpt.notes.append("params.json found beside the file (Meta/TorchChat layout)")
    elif name.endswith(".gguf"):
        from . import gguf_file

        ckpt = Checkpoint(path, root, "gguf")
        read_weight_file(ckpt, name)
        ckpt.notes.append("GGUF carries no tie flag: llama.cpp uses token_embd.weight when output.weight is absent")
        rule = gguf_file.llama_cpp_head_rule(gguf_file.architecture(path))
        if rule:
            ckpt.notes.append(f"except here: {rule}; keep output.weight")
    else:
        raise InputError(f"{path}: unknown file type; expected .safetensors, .bin, .pt, .pth, .gguf or a model folder")
    ckpt.record_aliases(ckpt.backends[name].metadata)
    return ckpt


def _open_folder(root: Path, _inside_modules: bool = False) -> Checkpoint:
    """A model folder: transformers' layouts first, then a sentence-transformers module, then one lone file."""
    _refuse_peft_adapter(root)
    config, config_file = _read_config(root)
    for name, layout in HF_LAYOUTS:
        if (root / name).is_file():
            ckpt = Checkpoint(root, root, layout, config, config_file)
            if name.endswith(".index.json"):
                _read_sharded(ckpt, name)
            else:
                read_weight_file(ckpt, name)
                ckpt.record_aliases(ckpt.backends[name].metadata)
            return ckpt
    if not _inside_modules:
        inner = _open_sentence_transformers_module(root)
        if inner is not None:
            return inner
    return _open_lone_weight_file(root)


def _refuse_peft_adapter(root: Path) -> None:
    """A PEFT adapter folder (adapter_config.json, no full weights) holds no full embedding or head."""
    if not (root / "adapter_config.json").is_file() or any((root / n).is_file() for n, _ in HF_LAYOUTS):
        return
    adapter = read_member_json(root, "adapter_config.json", "adapter config")
    base = adapter.get("base_model_name_or_path") if isinstance(adapter, dict) else None
    # the base model is named only when it looks like a repo id or a path: never quote other content
    named = isinstance(base, str) and len(base) <= 200 and _NAME.fullmatch(base)
    raise UnsupportedCheckpointError(
        f"{root}: is a PEFT adapter, which holds no full embedding or head; inspect the base model"
        + (f" ({base})" if named else "")
        + " or merge the adapter first"
    )


def _read_config(root: Path) -> tuple[dict[str, Any] | None, str | None]:
    """config.json as a dict and its name, or (None, None) when the folder has none."""
    if not (root / "config.json").is_file():
        return None, None
    config = read_member_json(root, "config.json", "config")
    if not isinstance(config, dict):
        raise CorruptFileError(f"{root / 'config.json'}: config is not a JSON object")
    return config, "config.json"


def _read_sharded(ckpt: Checkpoint, index_name: str) -> None:
    """Every shard the index names, each by the backend of its format; then the index is held to them.

    A large index already held to these very shards (file_cache: same index file, same shard files)
    is not parsed again: its shard names and metadata are remembered, and checked as on the first read.
    """
    index_path = safe_member(ckpt.root, index_name, "index")
    index_stat = os.stat(index_path)
    remembered = _remembered_index(index_stat)
    weight_map: dict[str, str] | None = None
    if remembered is None:
        weight_map, shards, metadata = _read_index(ckpt.root, index_name)
    else:
        names, metadata, verified = remembered
        shards = {shard: safe_member(ckpt.root, shard, f"index {index_name}") for shard in names}
    with collector.paused():  # the header columns and key table of a 90k-tensor index
        for shard, path in shards.items():
            read_weight_file(ckpt, shard, path)
    identities = [b.identity for b in ckpt.backends.values()]
    if remembered is not None and identities != verified:  # a shard changed since: hold the index to it again
        weight_map = _read_index(ckpt.root, index_name)[0]
    if weight_map is not None:
        check_index_holds(ckpt, weight_map, str(ckpt.root))
        if index_stat.st_size >= CACHED_INDEX_BYTES and None not in identities:
            file_cache.store("index", index_stat, (list(shards), metadata, identities))
    for backend in ckpt.backends.values():
        ckpt.record_aliases(backend.metadata)
    ckpt.index_metadata = metadata  # a conversion carries it into the output's index
    ckpt.record_aliases(metadata)  # huggingface_hub's sharded save records dropped names in the index only


def _remembered_index(index_stat: os.stat_result) -> tuple[list[str], dict[str, Any], list[Any]] | None:
    """(shard names, metadata, identities of the shards it was held to), or None."""
    value = file_cache.load("index", index_stat)
    try:
        names, metadata, verified = value
    except (TypeError, ValueError):
        return None
    if not (isinstance(names, list) and isinstance(metadata, dict) and isinstance(verified, list)):
        return None
    return names, metadata, verified


def _open_sentence_transformers_module(root: Path) -> Checkpoint | None:
    """Sentence-transformers: the transformer module may live in a subfolder named by modules.json."""
    if not (root / "modules.json").is_file():
        return None
    modules = read_member_json(root, "modules.json", "modules.json")
    for module in modules if isinstance(modules, list) else []:
        sub = module.get("path") if isinstance(module, dict) else None
        if not isinstance(sub, str) or not sub:
            continue
        folder = safe_member(root, sub, "modules.json")  # before any look at the disk
        if (folder / "config.json").is_file():
            if folder.resolve() == root.resolve():
                continue  # a module at "." is the folder itself, already looked at
            inner = _open_folder(folder, _inside_modules=True)
            inner.path = root
            inner.notes.append(f"sentence-transformers folder: model read from {sub}/")
            return inner
    return None


def _open_lone_weight_file(root: Path) -> Checkpoint:
    """Meta / TorchChat / nanoGPT: one .pth / .pt (or .safetensors / .bin) file in the folder."""
    singles = sorted(
        p.name for p in root.iterdir() if p.is_file() and p.name.endswith((".pth", ".pt", ".safetensors", ".bin"))
    )
    if len(singles) > 1:
        raise InputError(f"{root}: holds several checkpoint files ({', '.join(singles[:4])}); name one of them")
    if not singles:
        raise InputError(f"{root}: no weights found (looked for {', '.join(LOOKED_FOR)})")
    ckpt = _open_file(root / singles[0])
    ckpt.path = root  # the user named the folder: conversions write a folder too
    return ckpt
