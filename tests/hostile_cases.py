"""Hostile inputs, each written by the real libraries where one can write it, else byte by byte.

Each case builds its files under a folder and returns the tieconv command line to run on them, and
what a correct tieconv does: exit 2 with one line (`refuse`, naming what the message must say) or
succeed (`ok`). `tests/test_hostile.py` runs each in a subprocess under an address-space limit;
`bench/bench_hostile.py` runs the same cases (`full=True`: the red-team's sizes) and reports time
and peak memory.
"""

from __future__ import annotations

import json
import shutil
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
SECRET = "SECRET-7f3a-outside-the-folder"


@dataclass
class Case:
    name: str
    build: Callable[[Path, bool], list[str]]  # (folder, full) -> tieconv arguments
    expect: str  # "refuse" (exit 2, one line) or "ok" (exit 0)
    says: str = ""  # the refusal names this
    never_says: list[str] = field(default_factory=lambda: [SECRET])
    torch: bool = False  # imports torch (slower to start)
    fresh_cache: bool = False  # must build the skeleton: run with an empty tieconv cache


def _copy(name: str, dst: Path) -> Path:
    shutil.copytree(FIXTURES / name, dst)
    return dst


def _secret_file(tmp: Path, name: str, doc) -> Path:
    path = tmp / "outside" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def _set_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def _raw_safetensors(path: Path, header_text: bytes, data: bytes = b"", claimed: int | None = None,
                     sparse_size: int | None = None) -> None:
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", claimed if claimed is not None else len(header_text)) + header_text + data)
        if sparse_size:
            f.truncate(sparse_size)  # a sparse file: the claimed header length without the disk use


# ---------------------------------------------------------------- containment


def adapter_link(tmp: Path, full: bool) -> list[str]:
    folder = tmp / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").symlink_to(_secret_file(tmp, "a.json", {"base_model_name_or_path": SECRET}))
    return ["inspect", str(folder)]


def adapter_garbage(tmp: Path, full: bool) -> list[str]:
    folder = tmp / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(f'{{"base_model_name_or_path": "{SECRET} $(rm -rf ~) \\n x"}}')
    return ["inspect", str(folder)]


def params_link(tmp: Path, full: bool) -> list[str]:
    folder = _copy("meta-llama", tmp / "meta")
    (folder / "params.json").unlink()
    (folder / "params.json").symlink_to(_secret_file(tmp, "p.json", {"dim": SECRET}))
    return ["inspect", str(folder)]


def index_link(tmp: Path, full: bool) -> list[str]:
    folder = _copy("llama-tied-sharded", tmp / "m")
    index = folder / "model.safetensors.index.json"
    outside = _secret_file(tmp, "i.json", {"weight_map": {SECRET: SECRET}})
    index.unlink()
    index.symlink_to(outside)
    return ["inspect", str(folder)]


def modules_link(tmp: Path, full: bool) -> list[str]:
    folder = tmp / "st"
    folder.mkdir()
    (folder / "modules.json").symlink_to(_secret_file(tmp, "m.json", [{"path": SECRET}]))
    return ["inspect", str(folder)]


def modules_dot(tmp: Path, full: bool) -> list[str]:
    folder = tmp / "st"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (folder / "modules.json").write_text(json.dumps([{"idx": 0, "path": "."}, {"idx": 1, "path": "./."}]))
    return ["inspect", str(folder)]


def tokenizer_link(tmp: Path, full: bool) -> list[str]:
    folder = _copy("llama-duplicated", tmp / "m")
    (folder / "tokenizer.json").symlink_to(_secret_file(tmp, "t.json", {"x": SECRET}))
    return ["tie", str(folder), str(tmp / "out")]


def snapshot_link(tmp: Path, full: bool) -> list[str]:
    hub = tmp / "hub"
    snapshots = hub / "models--org--m" / "snapshots"
    snapshots.mkdir(parents=True)
    (snapshots / "0123456789abcdef").symlink_to(_copy("llama-tied", tmp / "outside-model"))
    return ["scan", str(hub), "--json"]


# ---------------------------------------------------------------- limits: safetensors, index, config


def header_many_empty_tensors(tmp: Path, full: bool) -> list[str]:
    # every entry a zero-size tensor: a legal file within the old 100 MB cap (1.7M entries at full size)
    count = 1_700_000 if full else 300_000
    entry = '"t%d":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}'
    text = ("{" + ",".join(entry % i for i in range(count)) + "}").encode()
    _raw_safetensors(tmp / "many.safetensors", text)
    return ["inspect", str(tmp / "many.safetensors")]


def header_claims_99mb(tmp: Path, full: bool) -> list[str]:
    _raw_safetensors(tmp / "big.safetensors", b"{", claimed=99_000_000, sparse_size=8 + 99_000_000)
    return ["inspect", str(tmp / "big.safetensors")]


def header_metadata_list(tmp: Path, full: bool) -> list[str]:
    _raw_safetensors(tmp / "meta.safetensors", json.dumps({"__metadata__": [], "model.embed_tokens.weight": {
        "dtype": "F32", "shape": [1, 1], "data_offsets": [0, 4]}}).encode(), b"\0" * 4)
    return ["inspect", str(tmp / "meta.safetensors")]


def header_shape_2_64(tmp: Path, full: bool) -> list[str]:
    _raw_safetensors(tmp / "shape.safetensors", json.dumps({"model.embed_tokens.weight": {
        "dtype": "F32", "shape": [2**64, 0], "data_offsets": [0, 0]}}).encode())
    return ["inspect", str(tmp / "shape.safetensors")]


def header_lone_surrogate(tmp: Path, full: bool) -> list[str]:
    _raw_safetensors(tmp / "s.safetensors", b'{"model.embed_tokens.weight\\ud800": {"dtype": "F32", "shape": [1], '
                     b'"data_offsets": [0, 4]}}', b"\0" * 4)
    return ["inspect", str(tmp / "s.safetensors")]


def index_missing_shards(tmp: Path, full: bool) -> list[str]:
    folder = _copy("llama-tied-sharded", tmp / "m")
    count = 1_900_000 if full else 100_000
    weight_map = {f"k{i}": f"s{i}.safetensors" for i in range(count)}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return ["inspect", str(folder)]


def index_long_name(tmp: Path, full: bool) -> list[str]:
    folder = _copy("llama-tied-sharded", tmp / "m")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.norm.weight"] = "x" * 300 + ".safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return ["inspect", str(folder)]


def index_many_shards(tmp: Path, full: bool) -> list[str]:
    folder = _copy("llama-tied-sharded", tmp / "m")
    weight_map = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    weight_map.update({f"extra.{i}": f"model-{i:05d}-of-30000.safetensors" for i in range(30_000)})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return ["tie", str(folder), str(tmp / "out")]


def config_num_labels(tmp: Path, full: bool) -> list[str]:
    folder = _copy("llama-duplicated", tmp / "m")
    _set_config(folder, num_labels=30_000_000)
    return ["inspect", str(folder)]


def config_huge(tmp: Path, full: bool) -> list[str]:
    folder = _copy("llama-duplicated", tmp / "m")
    count = 4_000_000 if full else 1_500_000  # 51 MB / 17 MB: over the size limit either way
    _set_config(folder, **{f"k{i}": 0 for i in range(count)})
    return ["inspect", str(folder)]


def config_many_keys(tmp: Path, full: bool) -> list[str]:
    folder = _copy("llama-duplicated", tmp / "m")
    _set_config(folder, **{f"k{i}": 0 for i in range(60_000)})  # within the size limit, not the values'
    return ["inspect", str(folder)]


def config_funnel_blocks(tmp: Path, full: bool) -> list[str]:
    import torch
    from safetensors.torch import save_file

    folder = tmp / "funnel"
    folder.mkdir()
    blocks = 40_000  # within every limit (3M are over the values limit): the skeleton is built with one block
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["FunnelForMaskedLM"], "model_type": "funnel", "vocab_size": 64, "d_model": 16,
        "n_head": 2, "d_head": 8, "d_inner": 32, "block_sizes": [1] * blocks, "tie_word_embeddings": True}))
    save_file({"funnel.embeddings.word_embeddings.weight": torch.zeros(64, 16)}, folder / "model.safetensors")
    return ["inspect", str(folder)]


def config_deep(tmp: Path, full: bool) -> list[str]:
    folder = _copy("llama-duplicated", tmp / "m")
    text = (folder / "config.json").read_text().strip()
    (folder / "config.json").write_text('{"deep": ' + "[" * 900 + "]" * 900 + ", " + text[1:])
    return ["tie", str(folder), str(tmp / "out")]


def config_lone_surrogate(tmp: Path, full: bool) -> list[str]:
    folder = _copy("llama-duplicated", tmp / "m")
    _set_config(folder, architectures=["LlamaForCausalLM"])
    text = (folder / "config.json").read_text()
    (folder / "config.json").write_text(text.replace('"LlamaForCausalLM"', '"LlamaForCausalLM\\udc80"'))
    return ["tie", str(folder), str(tmp / "out")]


def config_flag_string(tmp: Path, full: bool) -> list[str]:
    folder = _copy("llama-duplicated", tmp / "m")
    _set_config(folder, tie_word_embeddings="false")
    return ["inspect", str(folder)]


def config_flag_int(tmp: Path, full: bool) -> list[str]:
    folder = _copy("llama-duplicated", tmp / "m")
    _set_config(folder, text_config={"tie_word_embeddings": 1})
    return ["inspect", str(folder)]


def shards_in_subfolder(tmp: Path, full: bool) -> list[str]:
    folder = _copy("llama-tied-sharded", tmp / "m")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    (folder / "sub").mkdir()
    for name in set(index["weight_map"].values()):
        (folder / name).rename(folder / "sub" / name)
    index["weight_map"] = {k: f"sub/{v}" for k, v in index["weight_map"].items()}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return ["untie", str(folder), str(tmp / "out")]


# ---------------------------------------------------------------- GGUF


def gguf_empty_strings(tmp: Path, full: bool) -> list[str]:
    count = 2_000_000
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, 2, 2))
    out += struct.pack("<Q", 20) + b"general.architecture" + struct.pack("<IQ", 8, 5) + b"llama"
    out += struct.pack("<Q", 21) + b"tokenizer.ggml.tokens" + struct.pack("<IIQ", 9, 8, count)
    out += bytes(8 * count)  # two million empty strings
    for i, name in enumerate((b"token_embd.weight", b"output.weight")):
        out += struct.pack("<Q", len(name)) + name + struct.pack("<IQQIQ", 2, 4, 8, 0, 128 * i)
    out += bytes(-len(out) % 32) + bytes(256)
    (tmp / "strings.gguf").write_bytes(out)
    return ["inspect", str(tmp / "strings.gguf")]


# ---------------------------------------------------------------- pickles


def _torch_file_with_pickle(tmp: Path, name: str, pickle_bytes: bytes, compress: bool = False) -> Path:
    import torch

    base = tmp / "base.pt"
    torch.save({"a": torch.zeros(3)}, base)
    out = tmp / name
    with zipfile.ZipFile(base) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            data = pickle_bytes if info.filename.endswith("data.pkl") else zin.read(info.filename)
            method = zipfile.ZIP_DEFLATED if compress and info.filename.endswith("data.pkl") else zipfile.ZIP_STORED
            zout.writestr(info.filename, data, compress_type=method)
    return out


def pickle_hash_bomb(tmp: Path, full: bool) -> list[str]:
    # t0 = (); t(i+1) = (t(i), t(i)) through the memo: 2**80 leaves in 400 bytes, then a dict key
    bomb = b"\x80\x02}" + b")"
    for i in range(80):
        bomb += b"q" + bytes([i]) + b"h" + bytes([i]) + b"\x86"
    bomb += b"K\x01s."
    return ["inspect", str(_torch_file_with_pickle(tmp, "bomb.pt", bomb))]


def pickle_zip_bomb(tmp: Path, full: bool) -> list[str]:
    size = (2 << 30) if full else (100 << 20)
    text = b"\x80\x02X" + size.to_bytes(4, "little") + b"a" * size + b"."
    return ["inspect", str(_torch_file_with_pickle(tmp, "zipbomb.pt", text, compress=True))]


def pickle_stride0(tmp: Path, full: bool) -> list[str]:
    import torch

    view = torch.zeros(1).as_strided((1 << 29,), (0,))  # 2 GB claimed over 4 bytes
    torch.save({"model.embed_tokens.weight": view, "lm_head.weight": view}, tmp / "stride0.pt")
    return ["inspect", str(tmp / "stride0.pt")]


def pickle_claims_4tib(tmp: Path, full: bool) -> list[str]:
    import torch

    view = torch.zeros(1).as_strided((1 << 40,), (0,))
    torch.save({"model.embed_tokens.weight": view}, tmp / "claim.pt")
    return ["tie", str(tmp / "claim.pt"), str(tmp / "out.pt")]


def _pickle_of(tmp: Path, name: str, make) -> list[str]:
    import torch

    torch.save({"model.embed_tokens.weight": make(), "lm_head.weight": make()}, tmp / name)
    return ["inspect", str(tmp / name)]


def pickle_sparse(tmp: Path, full: bool) -> list[str]:
    import torch

    return _pickle_of(tmp, "sparse.pt", lambda: torch.eye(4).to_sparse())


def pickle_meta(tmp: Path, full: bool) -> list[str]:
    import torch

    return _pickle_of(tmp, "meta.pt", lambda: torch.empty(4, 4, device="meta"))


def pickle_nested(tmp: Path, full: bool) -> list[str]:
    import warnings

    import torch

    warnings.simplefilter("ignore")
    return _pickle_of(tmp, "nested.pt", lambda: torch.nested.nested_tensor([torch.ones(2), torch.ones(3)]))


CASES = [
    Case("adapter_config.json linked out of the folder", adapter_link, "refuse", "outside the model folder"),
    Case("adapter_config.json naming no repo", adapter_garbage, "refuse", "PEFT adapter"),
    Case("params.json linked out of the folder", params_link, "refuse", "outside the model folder", torch=True),
    Case("index linked out of the folder", index_link, "refuse", "outside the model folder"),
    Case("modules.json linked out of the folder", modules_link, "refuse", "outside the model folder"),
    Case("modules.json whose module is the folder itself", modules_dot, "refuse", "no weights found"),
    Case("tokenizer file linked out of the folder (tie)", tokenizer_link, "refuse", "outside the model folder"),
    Case("scan: a snapshot linked out of the cache", snapshot_link, "ok", "outside the cache"),
    Case("header of many zero-size tensors", header_many_empty_tensors, "refuse", "tensors, over the limit"),
    Case("header claiming 99 MB", header_claims_99mb, "refuse", "over the 25000000-byte cap"),
    Case("header metadata that is a list", header_metadata_list, "refuse", "__metadata__"),
    Case("header shape 2**64 x 0", header_shape_2_64, "refuse", "invalid shape"),
    Case("header key with a lone surrogate", header_lone_surrogate, "refuse", "surrogate"),
    Case("index naming 100k missing shards", index_missing_shards, "refuse", "shards, over the limit"),
    Case("index naming a shard of 300 characters", index_long_name, "refuse", "longer than any filesystem"),
    Case("index of 30k shards (tie)", index_many_shards, "refuse", "shards, over the limit"),
    Case("config num_labels 30,000,000", config_num_labels, "ok", torch=True, fresh_cache=True),
    Case("config of 17 MB", config_huge, "refuse", "far too large"),
    Case("config of 60k keys", config_many_keys, "refuse", "values"),
    Case("Funnel config of 40k blocks", config_funnel_blocks, "ok", torch=True, fresh_cache=True),
    Case("config 900 levels deep (tie)", config_deep, "refuse", "nests deeper"),
    Case("config with a lone surrogate (tie)", config_lone_surrogate, "refuse", "surrogate"),
    Case("tie flag \"false\"", config_flag_string, "refuse", 'tie_word_embeddings is "false" (a string)'),
    Case("text_config tie flag 1", config_flag_int, "refuse", "text_config.tie_word_embeddings is 1 (an integer)"),
    Case("index shards in a subfolder (untie)", shards_in_subfolder, "ok", torch=True),
    Case("GGUF of 2M empty metadata strings", gguf_empty_strings, "refuse", "strings"),
    Case("pickle hash bomb", pickle_hash_bomb, "refuse", "pickle bomb", torch=True),
    Case("deflated data.pkl expanding past the limit", pickle_zip_bomb, "refuse", "limit", torch=True),
    Case("pickle of stride-0 views", pickle_stride0, "refuse", "stride-0", torch=True),
    Case("pickle claiming 4 TiB (tie)", pickle_claims_4tib, "refuse", "stride-0", torch=True),
    Case("pickle of sparse tensors", pickle_sparse, "refuse", "is sparse", torch=True),
    Case("pickle of meta tensors", pickle_meta, "refuse", "meta device", torch=True),
    Case("pickle of nested tensors", pickle_nested, "refuse", "is nested", torch=True),
]


# ---------------------------------------------------------------- running one case


@dataclass
class Outcome:
    code: int | None  # None: killed at the time-out
    stdout: str
    stderr: str
    seconds: float  # wall clock
    cpu_seconds: float  # user + system: what the case costs on a machine shared with others
    peak_rss_bytes: int | None  # VmHWM of the tieconv process itself (None when it was killed)


# Runs the CLI and records its own peak RSS at exit: a forked child's ru_maxrss would include its parent's.
_LAUNCHER = """
import atexit, os, re, sys
def _report():
    with open("/proc/self/status") as f:
        kb = re.search(r"VmHWM:\\s+(\\d+)", f.read()).group(1)
    with open(os.environ["TIECONV_HWM_FILE"], "w") as f:
        f.write(kb)
atexit.register(_report)
sys.argv = ["tieconv", *sys.argv[1:]]
from tieconv.cli import main
main()
"""


def run(args: list[str], *, address_space_bytes: int, timeout: float, env: dict | None = None) -> Outcome:
    """Run the tieconv CLI with ARGS in a subprocess under RLIMIT_AS; SIGKILL at the time-out."""
    import os
    import resource
    import subprocess
    import sys
    import tempfile
    import time

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (address_space_bytes, address_space_bytes))

    with tempfile.TemporaryDirectory() as tmp:
        hwm = Path(tmp) / "hwm"
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), "TIECONV_HWM_FILE": str(hwm), **(env or {})}
        with open(Path(tmp) / "out", "w+b") as out, open(Path(tmp) / "err", "w+b") as err:
            start = time.monotonic()
            proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, *args], stdout=out, stderr=err, cwd=ROOT,
                                    env=full_env, preexec_fn=limit)
            while True:
                pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    code = os.waitstatus_to_exitcode(status)
                    break
                if time.monotonic() - start > timeout:
                    proc.kill()
                    _, status, rusage = os.wait4(proc.pid, 0)
                    code = None
                    break
                time.sleep(0.02)
            proc.returncode = -9 if code is None else code
            seconds = time.monotonic() - start
            out.seek(0)
            err.seek(0)
            peak = int(hwm.read_text()) * 1024 if hwm.exists() else None
            return Outcome(code, out.read().decode(errors="replace"), err.read().decode(errors="replace"),
                           seconds, rusage.ru_utime + rusage.ru_stime, peak)
