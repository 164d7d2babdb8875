"""Layouts and backends: every format answers the same questions through one interface; what the
libraries write (index metadata, shard names) is read as they write it; the fast index paths keep
every check."""

from __future__ import annotations

import json
import os

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import tieconv
from tieconv.errors import CorruptFileError
from tieconv.formats import safetensors_header
from tieconv.formats.checkpoint import open_checkpoint
from tieconv.formats.gguf_file import GGUFFile
from tieconv.formats.safetensors_file import SafetensorsFile
from tieconv.formats.torch_pickle import TorchPickle

from ..helpers import finish_gguf, write_llama


def _values() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"token_embd.weight": torch.randn(8, 4, generator=g), "output.weight": torch.randn(8, 4, generator=g)}


def _write(fmt: str, folder, values: dict[str, torch.Tensor]):
    if fmt == "safetensors":
        save_file(values, folder / "model.safetensors")
        return folder / "model.safetensors"
    if fmt == "torch":
        torch.save(values, folder / "model.pt")
        return folder / "model.pt"
    writer = gguf.GGUFWriter(folder / "model.gguf", arch="llama")
    for key, t in values.items():
        writer.add_tensor(key, t.numpy())
    finish_gguf(writer)
    return folder / "model.gguf"


@pytest.mark.parametrize("fmt,backend", [("safetensors", SafetensorsFile), ("torch", TorchPickle), ("gguf", GGUFFile)])
def test_every_format_answers_through_one_interface(tmp_path, fmt, backend):
    values = _values()
    ckpt = open_checkpoint(_write(fmt, tmp_path, values))
    assert [type(b) for b in ckpt.backends.values()] == [backend]
    assert set(ckpt.tensors) == set(values)
    for key, expected in values.items():
        raw = expected.numpy().tobytes()
        assert ckpt.tensors[key].nbytes == len(raw)
        assert b"".join(bytes(c) for c in ckpt.iter_bytes(key, chunk_bytes=7)) == raw  # chunks under a row
        assert ckpt.read_range(key, 5, 11) == raw[5:16]
        assert torch.equal(ckpt.load_tensor(key).reshape(expected.shape), expected)
    assert ckpt.totals() == (64, 64, 256)


def test_a_torch_file_keeps_what_else_it_holds(tmp_path):
    torch.save({"model": _values(), "iter_num": 7}, tmp_path / "ckpt.pt")
    ckpt = open_checkpoint(tmp_path / "ckpt.pt")
    assert ckpt.torch_object()["iter_num"] == 7
    assert not ckpt.streams_values("output.weight")  # already in memory: compared as loaded


def test_sharded_save_records_dropped_names_in_the_index_only_and_they_are_read(tmp_path):
    from huggingface_hub import save_torch_state_dict

    values = {"model.embed_tokens.weight": torch.randn(64, 16), "model.norm.weight": torch.ones(16)}
    for i in range(3):
        values[f"model.layers.{i}.mlp.weight"] = torch.randn(64, 16)
    values["lm_head.weight"] = values["model.embed_tokens.weight"]  # one tensor under two names: tied
    save_torch_state_dict(values, tmp_path, max_shard_size=5000, shared_tensors_to_discard=["lm_head.weight"])
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["lm_head.weight"] == "model.embed_tokens.weight"
    ckpt = open_checkpoint(tmp_path)
    assert ckpt.layout == "hf-safetensors-sharded" and len(ckpt.files) > 1
    assert all("lm_head.weight" not in m for m in ckpt.file_metadata.values())  # the shards do not say it
    assert ckpt.aliases == {"lm_head.weight": "model.embed_tokens.weight"}
    assert "lm_head.weight" not in ckpt.tensors


def test_an_index_mapping_a_key_to_the_wrong_shard_is_refused(tmp_path):
    from huggingface_hub import save_torch_state_dict

    save_torch_state_dict({f"w{i}": torch.randn(64, 16) for i in range(4)}, tmp_path, max_shard_size=5000)
    path = tmp_path / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    shards = sorted(set(index["weight_map"].values()))
    index["weight_map"]["w0"] = next(s for s in shards if s != index["weight_map"]["w0"])
    path.write_text(json.dumps(index))
    with pytest.raises(CorruptFileError, match="maps 1 key.* that it does not hold, e.g. 'w0'"):
        open_checkpoint(tmp_path)


@pytest.mark.parametrize("key,refused", [('"w\\ud800"', True), ('"w\\uDFFF"', True), ('"w\\ud83d\\ude00"', False)])
def test_index_strings_are_checked_for_lone_surrogates(tmp_path, key, refused):
    write_llama(tmp_path, tie=True, tensors={"model.embed_tokens.weight": torch.zeros(128, 64)})
    (tmp_path / "model.safetensors").rename(tmp_path / "a.safetensors")
    raw = '{"metadata": {}, "weight_map": {"model.embed_tokens.weight": "a.safetensors", %s: "a.safetensors"}}' % key
    (tmp_path / "model.safetensors.index.json").write_text(raw)
    with pytest.raises(CorruptFileError, match="surrogate" if refused else "does not hold"):
        open_checkpoint(tmp_path)


def test_the_header_cache_is_used_only_for_the_same_file(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = tmp_path / "big.safetensors"
    values = {f"layer.{i}.weight": torch.full((2,), float(i)) for i in range(1000)}  # a header over 32 kB
    save_file(values, path)
    first = safetensors_header.read_header(path)
    assert list((tmp_path / "cache" / "tieconv" / "headers").iterdir())
    monkeypatch.setattr(safetensors_header, "parse_header", lambda *a: pytest.fail("parsed again"))
    again = safetensors_header.read_header(path)
    assert again.tensors == first.tensors and again.numel == 2000
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    values["layer.0.weight"] = torch.zeros(3)  # rewritten in place: same inode, other size and ctime
    save_file(values, path)
    assert safetensors_header.read_header(path).tensors["layer.0.weight"].shape == (3,)
    for cached in (tmp_path / "cache" / "tieconv" / "headers").iterdir():
        cached.write_bytes(b"damaged")  # the file itself unchanged: the cache is read, and ignored
    assert safetensors_header.read_header(path).tensors["layer.0.weight"].shape == (3,)


def test_a_header_whose_file_only_lost_a_link_is_read_from_the_cache_after_its_bytes_are_checked(tmp_path,
                                                                                                monkeypatch):
    """Deleting an earlier `tie --link` output changes the input's ctime, not a byte: the cached header is
    used once the header bytes' digest matches. A header byte changed in place (size and mtime kept) misses."""
    import os

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = tmp_path / "big.safetensors"
    save_file({f"layer.{i}.weight": torch.full((2,), float(i)) for i in range(1000)}, path)
    first = safetensors_header.read_header(path)
    os.link(path, tmp_path / "linked.safetensors")
    os.unlink(tmp_path / "linked.safetensors")  # the file's ctime moves; nothing else does
    parsed = []
    real_parse = safetensors_header.parse_header
    monkeypatch.setattr(safetensors_header, "parse_header", lambda *a: parsed.append(1) or real_parse(*a))
    again = safetensors_header.read_header(path)
    assert parsed == [] and again.tensors == first.tensors and again.identity != first.identity
    assert safetensors_header.read_header(path).identity == again.identity and parsed == []  # recorded anew
    stat = os.stat(path)
    with open(path, "r+b") as f:  # "layer.0." -> "layer.X.": same length, same size
        raw = f.read(stat.st_size)
        at = raw.index(b'"layer.0.weight"') + 7
        f.seek(at)
        f.write(b"X")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the mtime put back: only the bytes tell
    changed = safetensors_header.read_header(path)
    assert parsed == [1] and "layer.X.weight" in changed.tensors and "layer.0.weight" not in changed.tensors


def test_inspect_counts_parameters_and_bytes_per_file(tmp_path):
    e = torch.randn(128, 64)
    write_llama(tmp_path, tie=False, tensors={"model.embed_tokens.weight": e, "lm_head.weight": e.clone(),
                                              "model.norm.weight": torch.ones(64)})
    report = tieconv.inspect(tmp_path)
    assert report.parameters.stored == 2 * 128 * 64 + 64
    assert report.bytes.total == 4 * report.parameters.stored


def test_gguf_backend_reads_the_file_as_gguf_does(tmp_path):
    values = _values()
    path = _write("gguf", tmp_path, values)
    reader = gguf.GGUFReader(path)
    ckpt = open_checkpoint(path)
    for t in reader.tensors:
        assert b"".join(bytes(c) for c in ckpt.iter_bytes(t.name)) == np.asarray(t.data).tobytes()


def test_range_reads_keep_a_bounded_number_of_files_open(tmp_path):
    import gc

    from tieconv.formats import tensor_file

    from huggingface_hub import save_torch_state_dict

    save_torch_state_dict({f"w{i}": torch.full((64, 16), float(i)) for i in range(40)}, tmp_path, max_shard_size=5000)
    ckpt = open_checkpoint(tmp_path)
    assert len(ckpt.files) == 40
    before = len(os.listdir("/proc/self/fd"))
    for i in range(40):
        assert ckpt.read_range(f"w{i}", 0, 4) == torch.tensor([float(i)]).numpy().tobytes()
    assert len(os.listdir("/proc/self/fd")) <= before + tensor_file.MAX_OPEN_FILES
    del ckpt
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) <= before


def test_a_cache_entry_someone_else_could_have_written_is_ignored(tmp_path, monkeypatch):
    """A cached header decides which bytes are read (and the verification reads through the same cache):
    an entry in a folder others may write, writable by others, owned by another user, or not a regular
    file is never used (a FIFO is not even opened for reading, so nothing hangs)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = tmp_path / "big.safetensors"
    save_file({f"layer.{i}.weight": torch.full((2,), float(i)) for i in range(1000)}, path)  # header > 32 kB
    safetensors_header.read_header(path)
    headers = tmp_path / "cache" / "tieconv" / "headers"
    assert os.stat(headers).st_mode & 0o777 == 0o700
    parsed: list[int] = []
    real_parse = safetensors_header.parse_header
    monkeypatch.setattr(safetensors_header, "parse_header", lambda *a: parsed.append(1) or real_parse(*a))

    def read() -> int:
        safetensors_header.read_header(path)
        return len(parsed)

    def entry():
        (only,) = headers.iterdir()
        return only

    assert read() == 0  # our own private entry is used
    os.chmod(headers, 0o777)
    assert read() == 1
    os.chmod(headers, 0o700)
    os.chmod(entry(), 0o666)
    assert read() == 2
    if os.getuid() == 0:
        os.chown(entry(), 65534, -1)
        assert read() == 3
    before = len(parsed)
    fifo = entry()
    fifo.unlink()
    os.mkfifo(fifo)
    assert read() == before + 1  # parsed again, and returned: the FIFO was not opened to read
    assert read() == before + 1  # the rewritten entry is ours again, and used
