from __future__ import annotations

import json
import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from tieconv.errors import CorruptFileError
from tieconv.formats.safetensors_header import MAX_HEADER_BYTES, parse_header, read_header


def raw_file(path, header: dict, data: bytes, pad: bytes = b"") -> None:
    body = json.dumps(header).encode() + pad
    path.write_bytes(struct.pack("<Q", len(body)) + body + data)


def test_matches_safetensors_own_reader(tmp_path):
    tensors = {"a": torch.randn(3, 4), "b": torch.zeros(2, dtype=torch.bfloat16), "c": torch.ones(0)}
    save_file(tensors, tmp_path / "x.safetensors", metadata={"format": "pt"})
    header = read_header(tmp_path / "x.safetensors")
    assert header.metadata == {"format": "pt"}
    with safe_open(tmp_path / "x.safetensors", "pt") as f:
        assert set(f.keys()) == set(header.tensors)
        for key in f.keys():
            sl = f.get_slice(key)
            assert list(sl.get_shape()) == list(header.tensors[key].shape)
            assert sl.get_dtype() == header.tensors[key].dtype
    assert header.tensors["a"].nbytes == 48 and header.tensors["b"].nbytes == 4


@pytest.mark.parametrize(
    "header,data,message",
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "past the data"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4, "needs 8 bytes"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, "hole"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8, "belong to no entry"),
        (
            {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
             "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}},
            b"\0" * 8, "overlaps",
        ),
        ({"a": {"dtype": "Q4", "shape": [1], "data_offsets": [0, 1]}}, b"\0", "unknown dtype"),
        ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}, b"", "invalid shape"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 4, "invalid data_offsets"),
        ({"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, b"\0" * 4, "invalid shape"),
        ({"__metadata__": {"k": 1}}, b"", "__metadata__"),
        ({"a": [1, 2]}, b"", "must have exactly"),
    ],
)
def test_rule_violations_are_refused(tmp_path, header, data, message):
    path = tmp_path / "bad.safetensors"
    raw_file(path, header, data)
    with pytest.raises(CorruptFileError, match=message) as info:
        read_header(path)
    assert str(path) in str(info.value)


def test_duplicate_keys_refused(tmp_path):
    entry = '{"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}'
    body = ('{"a": ' + entry + ', "a": ' + entry + "}").encode()
    path = tmp_path / "dup.safetensors"
    path.write_bytes(struct.pack("<Q", len(body)) + body + b"\0" * 4)
    with pytest.raises(CorruptFileError, match="duplicate key"):
        read_header(path)


def test_padding_spaces_allowed(tmp_path):
    path = tmp_path / "pad.safetensors"
    raw_file(path, {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, pad=b"   ")
    assert read_header(path).data_start == 8 + len(json.dumps({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})) + 3


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "too short"),
        (b"\x05\0\0", "too short"),
        (struct.pack("<Q", 1000) + b"{}", "truncated"),
        (struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}", "cap"),
        (struct.pack("<Q", 4) + b"\xff\xfe{}", "not UTF-8"),
        (struct.pack("<Q", 5) + b"{nope", "not valid JSON"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
    ],
)
def test_broken_files(tmp_path, content, message):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    with pytest.raises(CorruptFileError, match=message):
        read_header(path)


def test_deeply_nested_json_refused():
    raw = b'{"__metadata__": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(CorruptFileError):
        parse_header(raw, 8 + len(raw), "deep.safetensors")


def _valid_header_bytes():
    return json.dumps(
        {"__metadata__": {"format": "pt"},
         "a": {"dtype": "F16", "shape": [2, 2], "data_offsets": [0, 8]},
         "b": {"dtype": "I8", "shape": [3], "data_offsets": [8, 11]}}
    ).encode()


@settings(max_examples=300, deadline=None)
@given(
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
    cut=st.integers(0, 400),
    extra=st.integers(-11, 11),
)
def test_mutated_headers_end_in_a_report_or_a_corrupt_file_error(flips, cut, extra):
    raw = bytearray(_valid_header_bytes())
    for position, value in flips:
        raw[position % len(raw)] = value
    raw = bytes(raw[: max(1, len(raw) - cut % len(raw))])
    try:
        header = parse_header(raw, 8 + len(raw) + 11 + extra, "fuzz.safetensors")
    except CorruptFileError:
        return
    covered = sum(e.nbytes for e in header.tensors.values())
    assert covered == header.data_size


def test_cap_is_huggingface_hubs():
    assert MAX_HEADER_BYTES == 25_000_000  # real headers are a few MB; 100 MB of JSON needs over 1 GB to parse


@pytest.mark.parametrize(
    "header,data,message",
    [
        ({"__metadata__": [], "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "__metadata__"),
        ({"a": {"dtype": "F32", "shape": [2**64, 0], "data_offsets": [0, 0]}}, b"", "invalid shape"),
        ({"a": {"dtype": "F32", "shape": [2**63, 0], "data_offsets": [0, 0]}}, b"", "invalid shape"),
        ({"a": {"dtype": "F32", "shape": [1] * 65, "data_offsets": [0, 4]}}, b"\0" * 4, "invalid shape"),
        ({"a\ud800": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "surrogate"),
        ({"__metadata__": {"k": "\udfff"}}, b"", "surrogate"),
        ({"a": {"dtype": "x" * 10_000, "shape": [1], "data_offsets": [0, 1]}}, b"\0", r"unknown dtype 'x+\.\.\.;"),
    ],
)
def test_round_two_violations_are_refused(tmp_path, header, data, message):
    path = tmp_path / "bad.safetensors"
    raw_file(path, header, data)
    with pytest.raises(CorruptFileError, match=message) as info:
        read_header(path)
    assert len(str(info.value)) < 500  # never the file's bulk


def test_entries_are_counted_before_parsing(tmp_path, monkeypatch):
    import tieconv.formats.safetensors_header as sh

    monkeypatch.setattr(sh.json, "loads", lambda *a, **k: pytest.fail("parsed"))
    entry = '"t%d":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}'
    text = ("{" + ",".join(entry % i for i in range(sh.MAX_TENSORS_PER_FILE + 1)) + "}").encode()
    with pytest.raises(CorruptFileError, match="over the limit of 200000 per file"):
        parse_header(text, 8 + len(text), "many.safetensors")



def _both_checks(doc: dict, file_extra: int, data_bytes: int):
    """parse_header's outcome with its column check, and with the entry-by-entry check alone."""
    import tieconv.formats.safetensors_header as module

    raw = json.dumps(doc).encode()

    def outcome():
        try:
            h = parse_header(raw, 8 + len(raw) + data_bytes + file_extra, "t.safetensors")
        except CorruptFileError as exc:
            return str(exc)
        return h.names, h.columns, h.numel, h.data_size

    fast = outcome()
    real = module._valid_columns
    module._valid_columns = lambda *a: None
    try:
        return fast, outcome()
    finally:
        module._valid_columns = real


def _entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


@pytest.mark.parametrize("doc, data_bytes", [
    ({"a": _entry("I8", [2], 0, 2), "b": _entry("F16", [1, 3], 2, 8)}, 8),  # valid
    ({"b": _entry("F16", [1, 3], 2, 8), "a": _entry("I8", [2], 0, 2)}, 8),  # valid, listed out of offset order
    ({"a": _entry("I8", [0], 0, 0), "b": _entry("I8", [], 0, 1), "c": _entry("I8", [0, 5], 1, 1)}, 1),  # empty ones
    ({"a": _entry("I8", [True, 2], 0, 2)}, 2),  # a JSON true where 1 fits
    ({"a": _entry("I8", [2], False, 2)}, 2),  # a JSON false where 0 fits
    ({"a": _entry("I8", [2], 0, 2), "b": _entry("I8", [1], 2, True)}, 3),
    ({"a": _entry(5, [2], 0, 2)}, 2), ({"a": _entry("X8", [2], 0, 2)}, 2), ({"a": _entry(None, [2], 0, 2)}, 2),
    ({"a": {"dtype": "I8", "shape": [2]}}, 2), ({"a": {**_entry("I8", [2], 0, 2), "x": 1}}, 2), ({"a": [1]}, 2),
    ({"a": _entry("I8", 2, 0, 2)}, 2), ({"a": _entry("I8", [-1], 0, 2)}, 2), ({"a": _entry("I8", [2.0], 0, 2)}, 2),
    ({"a": _entry("I8", [1] * 65, 0, 1)}, 1), ({"a": _entry("I8", [2], 2, 0)}, 2), ({"a": _entry("I8", [2], -1, 1)}, 2),
    ({"a": _entry("I8", [2], 0, 2, ), "b": _entry("I8", [2], 3, 5)}, 5),  # a hole
    ({"a": _entry("I8", [2], 2, 4)}, 4),  # a hole before the first tensor
    ({"a": _entry("I8", [2], 0, 2), "b": _entry("I8", [2], 1, 3)}, 3),  # an overlap
    ({"a": _entry("I8", [2], 0, 2)}, 3),  # a byte after the last tensor
    ({"a": _entry("I8", [3], 0, 2)}, 2),  # the shape needs more bytes than the offsets give
    ({"a": _entry("F4", [3], 0, 2)}, 2), ({"a": _entry("F4", [3], 0, 1)}, 1),  # 12 bits: not whole bytes
    ({"a": _entry("F4", [4], 0, 2)}, 2),  # 16 bits: valid
    ({"a": _entry("I8", [2], 0, [2])}, 2), ({"a": _entry("I8", [2], 0, 2.0)}, 2), ({}, 0), ({}, 1),
])
def test_the_column_check_and_the_entry_by_entry_check_agree_on_each_rule(doc, data_bytes):
    fast, slow = _both_checks(doc, 0, data_bytes)
    assert fast == slow


_values = st.one_of(st.integers(-2, 12), st.booleans(), st.none(), st.sampled_from(["F16", "I8", "F4", "BF16", "x"]),
                    st.lists(st.integers(-1, 12), max_size=3), st.lists(st.booleans(), max_size=2))


@settings(max_examples=400, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(0, 3), max_size=3), min_size=1, max_size=5),
    dtypes=st.lists(st.sampled_from(["F16", "I8", "F4", "F32", "BOOL"]), min_size=5, max_size=5),
    order=st.permutations(range(5)),
    edits=st.lists(st.tuples(st.integers(0, 4), st.sampled_from(["dtype", "shape", "data_offsets", "extra", "drop"]),
                             _values), max_size=2),
    extra=st.integers(-2, 2),
)
def test_the_column_check_accepts_exactly_what_the_entry_by_entry_check_accepts(shapes, dtypes, order, edits, extra):
    """parse_header validates a column at a time and, only when a rule is broken, entry by entry (to say
    which): the two must agree on every header, valid or not, and build the same columns."""
    from tieconv.formats.safetensors_header import DTYPE_BITS

    doc, position = {}, 0
    for i in [i for i in order if i < len(shapes)]:  # laid out in a shuffled order of their offsets
        shape, dtype = shapes[i], dtypes[i]
        n = 1
        for d in shape:
            n *= d
        size = -(-n * DTYPE_BITS[dtype] // 8)
        doc[f"t{i}"] = _entry(dtype, shape, position, position + size)
        position += size
    for i, field, value in edits:
        entry = doc.get(f"t{i}")
        if entry is None:
            continue
        if field == "drop":
            entry.pop("dtype", None)
        elif field == "extra":
            entry["extra"] = value
        else:
            entry[field] = value
    fast, slow = _both_checks(doc, extra, position)
    assert fast == slow
