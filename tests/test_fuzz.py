"""Property-based tests: malformed files end in a report or a TieconvError, never another exception.

2,000 examples per target (the README's Guarantees section), each a real file on disk inspected
through the public API.
"""

from __future__ import annotations

import json
import re
import struct
import tempfile
import time
from pathlib import Path

import gguf
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tieconv
from tieconv.errors import TieconvError

from .conftest import FIXTURES
from .helpers import finish_gguf

EXAMPLES = 2000
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
WORK = Path(tempfile.mkdtemp(prefix="tieconv-fuzz-"))
SLOWEST = {"seconds": 0.0}


MAX_GROWTH_BYTES = 1 << 30  # no example may raise this process's peak RSS by a gigabyte


def _peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


PEAK_BEFORE = _peak_rss_bytes()  # at import, before any example
MESSAGE = {"last": ""}


def outcome(path) -> str:
    """Inspect `path`: "report" or "error"; asserts the properties every outcome must have."""
    start = time.monotonic()
    try:
        report = tieconv.inspect(path)
        assert report.verdict in ("tied", "duplicated", "untied", "tieable", "conflict", "head-missing",
                                  "embed-missing", "no-head", "undecided")
        result = "report"
        MESSAGE["last"] = ""
    except TieconvError as exc:
        message = str(exc)
        assert not re.search(r"[\x00-\x1f\x7f]", message), message  # one line, no control characters
        assert len(message) < 2000, "a message never carries a file's bulk"
        result = "error"
        MESSAGE["last"] = message
    elapsed = time.monotonic() - start
    SLOWEST["seconds"] = max(SLOWEST["seconds"], elapsed)
    assert elapsed < 30, "no hang"
    assert _peak_rss_bytes() - PEAK_BEFORE < MAX_GROWTH_BYTES, "memory stays bounded"
    return result


# ---------------------------------------------------------------- safetensors headers and data lengths

VALID = (FIXTURES / "single-files" / "llama-untied.safetensors").read_bytes()
JSON_ATOMS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                       st.text(max_size=12))
JSON = st.recursive(JSON_ATOMS, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                    max_leaves=12)


@st.composite
def safetensors_files(draw):
    length = int.from_bytes(VALID[:8], "little")
    header = json.loads(VALID[8 : 8 + length])
    data = VALID[8 + length :]
    mode = draw(st.sampled_from(["entry", "raw", "length", "data"]))
    if mode == "entry":
        key = draw(st.sampled_from(sorted(header)))
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets", None]))
        if field is None:
            header[key] = draw(JSON)
        elif field == "data_offsets":
            header[key][field] = draw(st.one_of(JSON, st.lists(st.integers(-5, 2**64), min_size=0, max_size=3)))
        else:
            header[key][field] = draw(JSON)
        if draw(st.booleans()):
            header[draw(st.text(max_size=6))] = header[key]  # duplicate entry under another name
        body = json.dumps(header).encode()
        return struct.pack("<Q", len(body)) + body + data
    raw = bytearray(VALID)
    if mode == "raw":
        for _ in range(draw(st.integers(1, 8))):
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
        return bytes(raw[: draw(st.integers(0, len(raw)))])
    if mode == "length":
        raw[:8] = struct.pack("<Q", draw(st.integers(0, 2**64 - 1)))
        return bytes(raw)
    cut = draw(st.integers(-len(data), 64))
    return bytes(raw[: len(raw) + cut]) if cut < 0 else bytes(raw) + bytes(cut)


@FUZZ
@given(content=safetensors_files())
def test_fuzzed_safetensors(content):
    path = WORK / "fuzz.safetensors"
    path.write_bytes(content)
    outcome(path)


# ---------------------------------------------------------------- index files

SHARD_NAMES = st.one_of(
    st.sampled_from(["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "../x.safetensors",
                     "/etc/passwd", "sub/../../y.safetensors", "missing.safetensors", "", "config.json", "."]),
    st.text(max_size=20), JSON)


@FUZZ
@given(weight_map=st.dictionaries(st.sampled_from(["model.embed_tokens.weight", "lm_head.weight",
                                                   "model.norm.weight", "x"]), SHARD_NAMES, max_size=4),
       wrap=st.sampled_from(["weight_map", "raw", "list"]))
def test_fuzzed_index(weight_map, wrap):
    folder = WORK / "index"
    if not folder.exists():
        import shutil

        shutil.copytree(FIXTURES / "llama-tied-sharded", folder)
    doc = {"weight_map": weight_map} if wrap == "weight_map" else (weight_map if wrap == "raw" else [weight_map])
    (folder / "model.safetensors.index.json").write_text(json.dumps(doc))
    outcome(folder)


# ---------------------------------------------------------------- config files

CONFIG_KEYS = ["architectures", "model_type", "tie_word_embeddings", "vocab_size", "hidden_size",
               "num_hidden_layers", "num_attention_heads", "text_config", "auto_map", "layer_types",
               "intermediate_size", "quantization_config"]
ABSURD = st.one_of(JSON, st.sampled_from([10**12, -1, 0, 2**63, 1e308, "1000", [], {}]),
                   st.sampled_from([["LlamaForCausalLM"], ["GPT2LMHeadModel"], ["NoSuchModel"], ["T5Model"], "Llama"]))


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(CONFIG_KEYS), st.one_of(ABSURD, st.sampled_from(["false", 1, 0, None])),
                               max_size=5),
       raw=st.one_of(st.none(), st.binary(max_size=40)))
def test_fuzzed_config(changes, raw):
    folder = WORK / "config"
    if not folder.exists():
        import shutil

        shutil.copytree(FIXTURES / "llama-duplicated", folder)
    if raw is not None:
        (folder / "config.json").write_bytes(raw)
    else:
        config = json.loads((FIXTURES / "llama-duplicated" / "config.json").read_text())
        config.update(changes)
        (folder / "config.json").write_text(json.dumps(config))
    result = outcome(folder)
    flag = changes.get("tie_word_embeddings", False)
    if raw is None and not isinstance(flag, bool):
        # a flag that is not a boolean is never read as absent: the refusal names it and its value
        assert result == "error" and f"tie_word_embeddings is {json.dumps(flag)[:37]}" in MESSAGE["last"], \
            MESSAGE["last"]


def test_deeply_nested_config(tmp_path):
    folder = tmp_path / "m"
    import shutil

    shutil.copytree(FIXTURES / "llama-duplicated", folder)
    (folder / "config.json").write_text('{"a": ' + "[" * 200_000 + "]" * 200_000 + "}")
    assert outcome(folder) == "error"


# ---------------------------------------------------------------- GGUF headers


def _valid_gguf() -> bytes:
    path = WORK / "valid.gguf"
    writer = gguf.GGUFWriter(path, arch="llama")
    writer.add_block_count(1)
    writer.add_string("general.name", "tiny")
    writer.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
    writer.add_tensor("token_embd.weight", np.ones((8, 4), dtype=np.float32))
    writer.add_tensor("output.weight", np.ones((8, 4), dtype=np.float32))
    finish_gguf(writer)
    return path.read_bytes()


VALID_GGUF = _valid_gguf()


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6),
       counts=st.lists(st.tuples(st.sampled_from([8, 16, 24]), st.integers(0, 2**64 - 1)), max_size=2),
       cut=st.integers(0, len(VALID_GGUF)))
def test_fuzzed_gguf(flips, counts, cut):
    raw = bytearray(VALID_GGUF)
    for position, value in flips:
        raw[position % len(raw)] = value
    for offset, value in counts:  # tensor count, kv count, first length field: huge lengths
        raw[offset : offset + 8] = struct.pack("<Q", value)
    path = WORK / "fuzz.gguf"
    path.write_bytes(bytes(raw[: max(cut, 1)]))
    outcome(path)
