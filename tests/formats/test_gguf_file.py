from __future__ import annotations

import gguf
import numpy as np
import pytest
from click.testing import CliRunner

import tieconv
from tieconv.cli import main
from tieconv.errors import CorruptFileError, RefusedError
from ..helpers import finish_gguf


def write_gguf(path, *, head: str | None, head_type=gguf.GGMLQuantizationType.F32, seed=0):
    """A small llama-arch GGUF written with gguf's own writer. head: None, 'same', 'different'."""
    rng = np.random.default_rng(seed)
    embed = rng.standard_normal((64, 16)).astype(np.float32)
    writer = gguf.GGUFWriter(path, arch="llama")
    writer.add_block_count(1)
    writer.add_context_length(32)
    writer.add_embedding_length(16)
    writer.add_string("general.name", "tiny")
    writer.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(64)])
    writer.add_tensor("token_embd.weight", embed)
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(16, dtype=np.float32))
    if head == "same":
        writer.add_tensor("output.weight", embed.copy())
    elif head == "different":
        other = rng.standard_normal((64, 16)).astype(np.float32)
        if head_type == gguf.GGMLQuantizationType.F16:
            writer.add_tensor("output.weight", other.astype(np.float16))
        else:
            writer.add_tensor("output.weight", other)
    finish_gguf(writer)
    return path


@pytest.mark.parametrize("head,verdict", [(None, "tied"), ("same", "tieable"), ("different", "untied")])
def test_gguf_verdicts(tmp_path, head, verdict):
    report = tieconv.inspect(write_gguf(tmp_path / "m.gguf", head=head))
    assert (report.layout, report.verdict) == ("gguf", verdict)
    assert report.embed.key == "token_embd.weight" and report.embed.dtype == "F32"
    assert report.head.key == "output.weight"


def test_gguf_head_of_another_type_is_untied_and_names_both(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", head="different", head_type=gguf.GGMLQuantizationType.F16)
    report = tieconv.inspect(path)
    assert report.verdict == "untied" and report.head.dtype == "F16" and "F32 embedding, F16 head" in report.reason


def _fields(path):
    reader = gguf.GGUFReader(path)
    return {f.name: f.contents() for f in reader.fields.values() if not f.name.startswith("GGUF.")}


def test_gguf_tie_and_untie_round_trip(tmp_path):
    src = write_gguf(tmp_path / "m.gguf", head="same")
    result = tieconv.tie(src, tmp_path / "tied.gguf")
    assert result.verdict == "tied" and result.bytes_saved == 64 * 16 * 4
    tied = gguf.GGUFReader(tmp_path / "tied.gguf")
    assert [t.name for t in tied.tensors] == ["token_embd.weight", "blk.0.attn_norm.weight"]
    assert _fields(tmp_path / "tied.gguf") == _fields(src)
    orig = {t.name: np.array(t.data) for t in gguf.GGUFReader(src).tensors}
    for t in tied.tensors:
        assert np.array_equal(np.array(t.data), orig[t.name])

    result = tieconv.untie(tmp_path / "tied.gguf", tmp_path / "untied.gguf")
    assert result.verdict == "tieable" and result.bytes_saved == -64 * 16 * 4
    untied = {t.name: np.array(t.data) for t in gguf.GGUFReader(tmp_path / "untied.gguf").tensors}
    assert np.array_equal(untied["output.weight"], untied["token_embd.weight"])
    assert _fields(tmp_path / "untied.gguf") == _fields(src)


def test_gguf_tie_refuses_different_heads(tmp_path):
    src = write_gguf(tmp_path / "m.gguf", head="different")
    with pytest.raises(RefusedError, match="--keep"):
        tieconv.tie(src, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_corrupt_gguf(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", head="same")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CorruptFileError, match="m.gguf"):
        tieconv.inspect(path)
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_gguf_tie_ignores_the_input_folders_other_files(tmp_path):
    src = write_gguf(tmp_path / "m.gguf", head="same")
    (tmp_path / "notes.txt").write_text("neighbour")
    result = tieconv.tie(src, tmp_path / "out.gguf")
    assert result.verdict == "tied" and result.files_written == [str(tmp_path / "out.gguf")]


def test_gguf_alignment_is_carried_over(tmp_path):
    path = tmp_path / "aligned.gguf"
    rng = np.random.default_rng(0)
    embed = rng.standard_normal((64, 16)).astype(np.float32)
    writer = gguf.GGUFWriter(path, arch="llama")
    writer.add_custom_alignment(64)
    writer.add_tensor("token_embd.weight", embed)
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(3, dtype=np.float32))  # odd size: padding matters
    writer.add_tensor("output.weight", embed.copy())
    finish_gguf(writer)
    tieconv.tie(path, tmp_path / "out.gguf")
    reader = gguf.GGUFReader(tmp_path / "out.gguf")  # gguf's own reader must read it
    assert reader.alignment == 64
    assert np.array_equal(np.array(reader.tensors[0].data), embed)
    assert [t.name for t in reader.tensors] == ["token_embd.weight", "blk.0.attn_norm.weight"]


def write_tied_pair(path, embed, arch="llama"):
    """A GGUF holding `embed` as token_embd.weight and a copy as output.weight (gguf's own writer)."""
    writer = gguf.GGUFWriter(path, arch=arch)
    writer.add_tensor("token_embd.weight", embed)
    writer.add_tensor("output.weight", embed.copy())
    finish_gguf(writer)
    return path


def test_gguf_tie_refused_where_llama_cpp_requires_the_head(tmp_path):
    path = write_tied_pair(tmp_path / "neox.gguf", np.ones((64, 16), dtype=np.float32), arch="gptneox")
    report = tieconv.inspect(path)
    assert report.verdict == "tieable" and any("requires output.weight" in n for n in report.notes)
    with pytest.raises(RefusedError, match="gptneox loader requires output.weight"):
        tieconv.tie(path, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_gguf_write_under_a_file_size_limit_is_a_clean_refusal(tmp_path):
    import resource
    import subprocess
    import sys

    from ..conftest import ROOT

    path = write_tied_pair(tmp_path / "m.gguf", np.random.default_rng(0).standard_normal((4096, 64)).astype(np.float32))

    def cap():
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    result = subprocess.run([sys.executable, "-m", "tieconv.cli", "tie", str(path), str(tmp_path / "out.gguf")],
                            preexec_fn=cap, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and "file size limit" in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


def _ggufs_own_rewrite(src, dst, tensors):
    """What gguf's own tools write for `src` with `tensors` [(name, source)] (gguf_new_metadata's pattern):
    the reference the streamed rewrite is held to."""
    reader = gguf.GGUFReader(src, "r")
    by_name = {t.name: t for t in reader.tensors}
    writer = gguf.GGUFWriter(dst, arch=reader.get_field(gguf.Keys.General.ARCHITECTURE).contents())
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        if field.name == gguf.Keys.General.ALIGNMENT:
            writer.add_custom_alignment(int(field.contents()))
            continue
        kind = field.types[0]
        writer.add_key_value(field.name, field.contents(), kind,
                             sub_type=field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None)
    for name, source in tensors:
        t = by_name[source]
        writer.add_tensor_info(name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _, source in tensors:
        writer.write_tensor_data(by_name[source].data)
    writer.close()


@pytest.mark.parametrize("alignment", [None, 64])
def test_tie_and_untie_write_byte_for_byte_what_ggufs_writer_writes(tmp_path, alignment):
    """The metadata is copied as stored and the tensors in the kernel, laid out as GGUFWriter lays them out."""
    path = tmp_path / "m.gguf"
    rng = np.random.default_rng(0)
    embed = rng.standard_normal((64, 16)).astype(np.float32)
    writer = gguf.GGUFWriter(path, arch="llama")
    if alignment:
        writer.add_custom_alignment(alignment)
    writer.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(64)])
    writer.add_array("tokenizer.ggml.scores", [0.5, -1.0])
    writer.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    writer.add_tensor("token_embd.weight", embed)
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(3, dtype=np.float32))  # odd size: padding matters
    writer.add_tensor("blk.0.ffn_down.weight", rng.standard_normal((32, 16)).astype(np.float16))
    writer.add_tensor("output.weight", embed.copy())
    finish_gguf(writer)
    kept = ["token_embd.weight", "blk.0.attn_norm.weight", "blk.0.ffn_down.weight"]
    tieconv.tie(path, tmp_path / "tied.gguf")
    _ggufs_own_rewrite(path, tmp_path / "reference-tied.gguf", [(k, k) for k in kept])
    assert (tmp_path / "tied.gguf").read_bytes() == (tmp_path / "reference-tied.gguf").read_bytes()
    tieconv.untie(tmp_path / "tied.gguf", tmp_path / "untied.gguf")
    _ggufs_own_rewrite(tmp_path / "tied.gguf", tmp_path / "reference-untied.gguf",  # the copy beside its source
                       [(kept[0], kept[0]), ("output.weight", "token_embd.weight")] + [(k, k) for k in kept[1:]])
    assert (tmp_path / "untied.gguf").read_bytes() == (tmp_path / "reference-untied.gguf").read_bytes()
    assert tieconv.diff(path, tmp_path / "untied.gguf").equivalent


def test_diff_finds_a_changed_metadata_value_and_a_changed_vocabulary(tmp_path):
    """GGUF metadata read by tieconv's stepper: a scalar shows as its value, a long array as a digest."""
    def make(name, eps, last_token):
        writer = gguf.GGUFWriter(tmp_path / name, arch="llama")
        writer.add_float32("llama.attention.layer_norm_rms_epsilon", eps)
        writer.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(63)] + [last_token])
        writer.add_tensor("token_embd.weight", np.ones((64, 16), dtype=np.float32))
        finish_gguf(writer)
        return tmp_path / name

    a, b, c = make("a.gguf", 1e-5, "t63"), make("b.gguf", 1e-6, "t63"), make("c.gguf", 1e-5, "zz")
    assert tieconv.diff(a, make("a2.gguf", 1e-5, "t63")).equivalent
    (eps,) = tieconv.diff(a, b).config
    assert eps.field == "llama.attention.layer_norm_rms_epsilon" and eps.a == pytest.approx(1e-5) \
        and eps.b == pytest.approx(1e-6)
    (tokens,) = tieconv.diff(a, c).config
    assert tokens.field == "tokenizer.ggml.tokens" and tokens.a.startswith("<64 items, sha256") and tokens.a != tokens.b


def test_a_large_gguf_is_tied_in_bounded_memory(tmp_path):
    """A 384 MB GGUF (sparse: header, then holes): the tie copies the tensors in the kernel, so the
    process's peak memory stays far below the bytes written (GGUFWriter's memory map grew with them)."""
    import os
    import subprocess
    import sys

    from ..conftest import ROOT

    path = tmp_path / "big.gguf"
    vocab, hidden = 16384, 2048  # 128 MB per matrix in F32
    writer = gguf.GGUFWriter(path, arch="llama")
    nbytes = vocab * hidden * 4
    for name in ("token_embd.weight", "blk.0.attn_norm.weight", "output.weight"):
        shape, size = ((vocab, hidden), nbytes) if name != "blk.0.attn_norm.weight" else ((hidden,), hidden * 4)
        writer.add_tensor_info(name, shape, np.dtype(np.float32), size, gguf.GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    data_start = os.path.getsize(path) + (-os.path.getsize(path) % 32)  # gguf pads the header when data follows
    with open(path, "r+b") as f:
        f.truncate(data_start + 2 * nbytes + hidden * 4)
    code = ("import re, sys, tieconv; r = tieconv.tie(sys.argv[1], sys.argv[2]); "
            "print(r.verdict, re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))")
    out = subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "tied.gguf")], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True).stdout.split()
    assert out[0] == "tied" and (tmp_path / "tied.gguf").stat().st_size > nbytes
    assert int(out[1]) // 1024 < 120, out  # MB, for 128 MB written and 256 MB compared


def _patched_gguf(path, fields, replace):
    """A llama GGUF written by gguf's writer with uint32 `fields` {key: value} (and a string field
    general.name "QQ"), then bytes replaced in place (`replace` {old: new} of equal length): keys and
    values gguf's writer refuses to write."""
    writer = gguf.GGUFWriter(path, arch="llama")
    for key, value in fields.items():
        writer.add_uint32(key, value)
    writer.add_string("general.name", "QQ")
    writer.add_tensor("token_embd.weight", np.ones((8, 4), dtype=np.float32))
    writer.add_tensor("output.weight", np.ones((8, 4), dtype=np.float32))
    finish_gguf(writer)
    data = path.read_bytes()
    for old, new in replace.items():
        assert len(old) == len(new) and data.count(old) == 1
        data = data.replace(old, new)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("key", ["llama.block_count", "general.alignment"])
def test_a_metadata_key_written_twice_is_refused(tmp_path, key):
    """gguf's GGUFReader refuses a repeated key; read last-wins, diff called A (1 then 2) equivalent to
    B (2), and a tie wrote a file GGUFReader cannot read (with two alignments, the data where one says)."""
    twice = _patched_gguf(tmp_path / "twice.gguf", {key: 32, key[:-3] + "Xyz": 64},
                          {key[:-3].encode() + b"Xyz": key.encode()})
    once = _patched_gguf(tmp_path / "once.gguf", {key: 64}, {})
    with pytest.raises(KeyError, match="Duplicate"):  # gguf's own reader
        gguf.GGUFReader(twice)
    with pytest.raises(CorruptFileError, match="appears twice"):
        tieconv.diff(twice, once)
    result = CliRunner().invoke(main, ["tie", str(twice), str(tmp_path / "tied.gguf")])
    assert result.exit_code == 2 and "appears twice" in result.output and not (tmp_path / "tied.gguf").exists()


def test_a_metadata_key_that_is_not_utf8_is_refused(tmp_path):
    """Two keys, b"x.\\xff" and "x.\\\\xff", once read as one name (backslashreplace): the second hid the first."""
    a = _patched_gguf(tmp_path / "a.gguf", {"x.A": 1, "x.\\xff": 2}, {b"x.A": b"x.\xff"})
    b = _patched_gguf(tmp_path / "b.gguf", {"x.A": 2, "x.\\xff": 2}, {b"x.A": b"x.\xff"})
    with pytest.raises(CorruptFileError, match="not UTF-8"):
        tieconv.diff(a, b)
    result = CliRunner().invoke(main, ["tie", str(a), str(tmp_path / "tied.gguf")])
    assert result.exit_code == 2 and "not UTF-8" in result.output


def test_a_string_value_that_is_not_utf8_differs_from_every_string(tmp_path):
    """A value that is not UTF-8 once read as the string "<not UTF-8: ff..>", which a real string can hold."""
    a = _patched_gguf(tmp_path / "a.gguf", {}, {b"QQ": b"\xff\xfe"})
    b = _patched_gguf(tmp_path / "b.gguf", {}, {})
    import tieconv.formats.gguf_file as gguf_file
    marker = gguf_file.read_metadata(a)["general.name"]
    writer = gguf.GGUFWriter(tmp_path / "c.gguf", arch="llama")
    writer.add_string("general.name", f"<not UTF-8: {bytes([0xff, 0xfe]).hex()}>")
    writer.add_tensor("token_embd.weight", np.ones((8, 4), dtype=np.float32))
    writer.add_tensor("output.weight", np.ones((8, 4), dtype=np.float32))
    finish_gguf(writer)
    assert marker != gguf_file.read_metadata(tmp_path / "c.gguf")["general.name"]
    (name,) = tieconv.diff(a, tmp_path / "c.gguf").config
    assert name.field == "general.name"
    assert not tieconv.diff(a, b).equivalent
    tieconv.tie(a, tmp_path / "tied.gguf")  # equal to itself: the conversion verifies
    assert tieconv.diff(a, tmp_path / "tied.gguf").equivalent
    result = CliRunner().invoke(main, ["diff", "--json", str(a), str(tmp_path / "c.gguf")])
    assert result.exit_code == 0 and '"not UTF-8"' in result.output, result.output


@pytest.mark.parametrize("add", ["add_uint64", "add_string"])
def test_an_alignment_that_is_not_uint32_is_refused(tmp_path, add):
    """GGUFReader refuses it and llama.cpp asserts on it; read as absent (32), a tie wrote a file neither reads."""
    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(path, arch="llama")
    getattr(writer, add)("general.alignment", 64 if add == "add_uint64" else "64")
    writer.add_tensor("token_embd.weight", np.ones((8, 4), dtype=np.float32))
    writer.add_tensor("output.weight", np.ones((8, 4), dtype=np.float32))
    finish_gguf(writer)
    with pytest.raises(ValueError, match="general.alignment"):  # gguf's own reader
        gguf.GGUFReader(path)
    result = CliRunner().invoke(main, ["tie", str(path), str(tmp_path / "tied.gguf")])
    assert result.exit_code == 2 and "general.alignment is of value type" in result.output, result.output
    assert not (tmp_path / "tied.gguf").exists()


def test_a_quantized_row_that_is_no_whole_number_of_blocks_is_refused(tmp_path):
    """A Q8_0 tensor whose rows hold 33 elements (blocks of 32): its size was rounded down and a tie copied
    that many bytes; GGUFReader and llama.cpp refuse such a file."""
    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(path, arch="llama")
    q8 = np.zeros((8, 34), dtype=np.uint8)  # 8 rows of one Q8_0 block (32 elements in 34 bytes)
    writer.add_tensor("token_embd.weight", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("output.weight", q8.copy(), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    finish_gguf(writer)
    data = bytearray(path.read_bytes())
    for name in (b"token_embd.weight", b"output.weight"):
        dims_at = data.index(name) + len(name) + 4  # after the name: n_dims (u32), then ne0
        assert int.from_bytes(data[dims_at:dims_at + 8], "little") == 32
        data[dims_at:dims_at + 8] = (33).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="not a multiple"):  # gguf's own reader
        gguf.GGUFReader(path)
    result = CliRunner().invoke(main, ["tie", str(path), str(tmp_path / "tied.gguf")])
    assert result.exit_code == 2 and "not a multiple of its Q8_0 blocks of 32" in result.output, result.output


def test_a_gguf_without_its_embedding_names_it_as_llama_cpp_does(tmp_path):
    """A lone output.weight in a GGUF is llama.cpp's head: the embedding it lacks is token_embd.weight (Meta's
    tok_embeddings.weight was found first, and a tie wrote the head under that name, which llama.cpp never
    reads)."""
    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(path, arch="llama")
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(3, dtype=np.float32))
    head = np.arange(32, dtype=np.float32).reshape(8, 4)
    writer.add_tensor("output.weight", head)
    finish_gguf(writer)
    report = tieconv.inspect(path)
    assert (report.verdict, report.embed.key, report.head.key) == \
        ("embed-missing", "token_embd.weight", "output.weight")
    tieconv.tie(path, tmp_path / "tied.gguf")
    tensors = {t.name: np.array(t.data) for t in gguf.GGUFReader(tmp_path / "tied.gguf").tensors}
    assert sorted(tensors) == ["blk.0.attn_norm.weight", "token_embd.weight"]
    assert np.array_equal(tensors["token_embd.weight"], head)


def test_more_metadata_keys_than_any_real_file_are_refused_before_stepping(tmp_path):
    """Every key is remembered (a repeat is refused), so their number is limited before the first is read."""
    import struct

    from tieconv.formats.gguf_file import MAX_GGUF_KEYS

    path = tmp_path / "keys.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, MAX_GGUF_KEYS + 1) + bytes(64))
    with pytest.raises(CorruptFileError, match=f"{MAX_GGUF_KEYS + 1} metadata entries, over the limits"):
        tieconv.inspect(path)
