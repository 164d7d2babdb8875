"""`tieconv diff` / `tieconv.diff` / `compare_reports`: what a loader builds, compared on real checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import tieconv
from tieconv.formats.checkpoint import open_checkpoint
from tieconv.cli import main
from tieconv.inspection.equivalence import RANDOM, compare_reports, loader_view
from tieconv.errors import InputError

from ..conftest import FIXTURES, ROOT
from ..helpers import finish_gguf
from ..formats.test_hub import architectures, hub, xdg  # noqa: F401 - the test server and its cache fixtures
from ..formats.test_hub import tieconv as hub_cli

FIXTURE_INPUTS = [
    "bart-tied", "bert-encoder", "gpt2-bin", "gpt2-bin-sharded", "gpt2-tied", "llama-conflict", "llama-duplicated",
    "llama-embed-missing", "llama-head-missing", "llama-tieable", "llama-tied", "llama-tied-sharded",
    "llama-untied", "llama-untied-sharded", "meta-llama", "nanogpt", "t5-tied", "t5-untied", "torchtune",
    "single-files/llama-untied.safetensors", "single-files/llama-save-model.safetensors", "nanogpt/ckpt.pt",
]
FLAG_FIELDS = {"tie_word_embeddings", "text_config.tie_word_embeddings", "scale_decoder_outputs"}


def run(*args):
    return CliRunner().invoke(main, list(map(str, args)))


def flip_byte(path, key: str, at: int = 0) -> None:
    """Flip one bit of the stored bytes of `key` (byte `at` of its data) in a safetensors file, in place."""
    ckpt = open_checkpoint(path)
    t = ckpt.tensors[key]
    with open(ckpt.root / t.file, "r+b") as f:
        f.seek(t.offset + at)
        byte = f.read(1)[0]
        f.seek(t.offset + at)
        f.write(bytes([byte ^ 0x01]))


# ---------------------------------------------------------------- equivalent pairs


@pytest.mark.parametrize("name", FIXTURE_INPUTS)
def test_every_fixture_is_equivalent_to_itself(name, tmp_path):
    report = tieconv.diff(FIXTURES / name, FIXTURES / name)
    assert report.equivalent, report.differences
    assert report.parameters > 0
    copy = tmp_path / name.replace("/", "_")
    (shutil.copytree if (FIXTURES / name).is_dir() else shutil.copy)(FIXTURES / name, copy)
    report = tieconv.diff(FIXTURES / name, copy)
    assert report.equivalent, report.differences
    assert report.parameters > 0 and report.bytes_compared > 0


def test_a_head_both_sides_start_at_random_is_a_note_not_a_difference():
    report = tieconv.diff(FIXTURES / "llama-head-missing", FIXTURES / "llama-head-missing")
    assert report.equivalent
    assert any("both loaders start it at random" in n for n in report.notes)


@pytest.mark.parametrize("action,name,options", [
    ("tie", "llama-duplicated", []), ("tie", "llama-tieable", []), ("tie", "llama-embed-missing", []),
    ("tie", "llama-tied", ["--force"]), ("tie", "nanogpt", ["--force"]), ("tie", "torchtune", ["--force"]),
    ("untie", "llama-tied", []), ("untie", "llama-tied-sharded", []), ("untie", "llama-duplicated", []),
    ("untie", "llama-conflict", []), ("untie", "llama-embed-missing", []), ("untie", "gpt2-tied", []),
    ("untie", "gpt2-bin", []), ("untie", "gpt2-bin-sharded", []), ("untie", "bart-tied", []),
    ("untie", "t5-tied", []), ("untie", "nanogpt", []), ("untie", "torchtune", []),
    ("untie", "llama-untied", ["--force"]), ("untie", "meta-llama", ["--force"]),
    ("untie", "t5-untied", ["--force"]), ("untie", "nanogpt/ckpt.pt", []),
])
def test_tie_and_untie_outputs_are_equivalent_to_their_input(tmp_path, action, name, options):
    src = FIXTURES / name
    dst = tmp_path / ("out" + src.suffix if src.is_file() else "out")
    result = run(action, src, dst, "--json", *options)
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)["plan"]

    report = tieconv.diff(src, dst)
    # the only differences a user sees are the tie flag (and T5's pinned scaling) the conversion sets
    assert {c.field for c in report.config} <= FLAG_FIELDS, report.differences
    assert not (report.values or report.random or report.stored_on_one_side), report.differences
    expected = plan["config_changes"]
    assert {c.field: c.b for c in report.config} == {k: v for k, v in expected.items()
                                                      if k in {c.field for c in report.config}}
    # declared as intended, the output is equivalent
    declared = compare_reports(tieconv.inspect(src), tieconv.inspect(dst), expected_config=expected)
    assert declared.equivalent, declared.differences
    assert compare_reports(tieconv.inspect(src), tieconv.inspect(dst), expected_config=expected,
                           sample_bytes=64).equivalent


def test_sharing_is_a_note_not_a_difference(tmp_path):
    out = tmp_path / "tied"
    tieconv.tie(FIXTURES / "llama-duplicated", out)
    report = tieconv.diff(FIXTURES / "llama-duplicated", out)
    assert report.equivalent
    assert report.notes == ["lm_head.weight, model.embed_tokens.weight: one tensor in B, stored apart in A (equal values)"]


def test_shard_layout_and_file_names_do_not_matter():
    for a, b in (("llama-untied", "llama-untied-sharded"), ("llama-tied", "llama-tied-sharded"),
                 ("gpt2-bin", "gpt2-bin-sharded"), ("gpt2-tied", "gpt2-bin")):
        report = tieconv.diff(FIXTURES / a, FIXTURES / b)
        assert report.equivalent, (a, b, report.differences)


@pytest.mark.parametrize("name", ["llama-untied", "llama-tied", "gpt2-tied", "t5-tied", "bart-tied"])
def test_a_transformers_round_trip_is_equivalent(tmp_path, name):
    """from_pretrained + save_pretrained rewrites the config (defaults, dtype) and the file: the model is the same."""
    import transformers

    auto = transformers.AutoModelForSeq2SeqLM if name.startswith(("t5", "bart")) else transformers.AutoModelForCausalLM
    auto.from_pretrained(FIXTURES / name).save_pretrained(tmp_path / "resaved")
    report = tieconv.diff(FIXTURES / name, tmp_path / "resaved")
    assert report.equivalent, report.differences


def test_a_base_model_prefix_is_the_same_parameter(tmp_path):
    """transformers adds the base model's `model.` prefix at load: a file without it loads the same."""
    out = tmp_path / "no-prefix"
    shutil.copytree(FIXTURES / "llama-untied", out)
    sd = load_file(out / "model.safetensors")
    save_file({k.removeprefix("model."): v for k, v in sd.items()}, out / "model.safetensors", metadata={"format": "pt"})
    report = tieconv.diff(FIXTURES / "llama-untied", out)
    assert report.equivalent, report.differences
    assert any("different prefix" in n for n in report.notes)


def test_a_torch_compile_prefix_is_looked_through_without_a_config(tmp_path):
    """nanoGPT saves `_orig_mod.` keys after torch.compile; its loading code strips them."""
    obj = torch.load(FIXTURES / "nanogpt" / "ckpt.pt", weights_only=True)
    torch.save({k.removeprefix("_orig_mod."): v for k, v in obj["model"].items()}, tmp_path / "plain.pt")
    report = tieconv.diff(FIXTURES / "nanogpt" / "ckpt.pt", tmp_path / "plain.pt")
    assert report.equivalent, report.differences
    assert any("different prefix" in n for n in report.notes)


# ---------------------------------------------------------------- differences


def test_one_flipped_byte_in_a_layer_is_found_and_measured(fixture_copy):
    b = fixture_copy("llama-untied-sharded")
    key = "model.layers.0.mlp.down_proj.weight"
    flip_byte(b, key, at=100)
    report = tieconv.diff(FIXTURES / "llama-untied", b)
    assert not report.equivalent
    (d,) = report.values
    assert (d.parameter, d.kind, d.a_key, d.b_key) == (key, "values", key, key)
    a_values = load_file(FIXTURES / "llama-untied" / "model.safetensors")[key].double().flatten()
    b_values = tieconv.load_state_dict(b)[key].double().flatten()
    assert d.max_abs_diff == pytest.approx((a_values - b_values).abs().max().item())
    assert 0 < d.max_abs_diff and d.relative_diff == pytest.approx(d.max_abs_diff / a_values.abs().max().item())
    assert not (report.random or report.config or report.stored_on_one_side)
    assert report.headline().startswith(f"{key}: values differ, max abs difference")


def test_samples_find_a_flip_inside_a_sample_and_compare_fewer_bytes(fixture_copy):
    b = fixture_copy("llama-untied")
    flip_byte(b, "model.layers.0.mlp.up_proj.weight", at=0)
    a_report, b_report = tieconv.inspect(FIXTURES / "llama-untied"), tieconv.inspect(b)
    sampled = compare_reports(a_report, b_report, sample_bytes=16)
    assert [d.parameter for d in sampled.values] == ["model.layers.0.mlp.up_proj.weight"]
    full = compare_reports(a_report, b_report)
    assert sampled.bytes_compared < full.bytes_compared


def test_a_head_a_loader_starts_at_random(tmp_path):
    """Same weights; B's config unties and stores no head: transformers initialises lm_head at random."""
    report = tieconv.diff(FIXTURES / "llama-tieable", FIXTURES / "llama-head-missing")
    assert not report.equivalent
    assert [(r.parameter, r.side) for r in report.random] == [("lm_head.weight", "b")]
    assert "the flag unties and it is not stored" in report.random[0].reason
    assert not (report.values or report.config)
    reverse = tieconv.diff(FIXTURES / "llama-head-missing", FIXTURES / "llama-tieable")
    assert [(r.parameter, r.side) for r in reverse.random] == [("lm_head.weight", "a")]


def test_loader_view_follows_the_flag():
    tied = loader_view(tieconv.inspect(FIXTURES / "llama-tied"))
    assert tied["lm_head.weight"] == "model.embed_tokens.weight"
    missing = loader_view(tieconv.inspect(FIXTURES / "llama-head-missing"))
    assert missing["lm_head.weight"] is RANDOM
    embed_missing = loader_view(tieconv.inspect(FIXTURES / "llama-embed-missing"))
    assert embed_missing["model.embed_tokens.weight"] == "lm_head.weight"  # transformers ties symmetrically
    bart = loader_view(tieconv.inspect(FIXTURES / "bart-tied"))
    assert {bart[k] for k in ("lm_head.weight", "model.encoder.embed_tokens.weight",
                              "model.decoder.embed_tokens.weight")} == {"model.shared.weight"}
    saved = loader_view(tieconv.inspect(FIXTURES / "single-files" / "llama-save-model.safetensors"))
    assert saved["model.embed_tokens.weight"] == "lm_head.weight"  # save_model recorded `dropped -> kept`


def test_same_bytes_in_another_dtype_is_a_difference(fixture_copy):
    b = fixture_copy("llama-untied")
    key = "model.layers.0.self_attn.q_proj.weight"
    sd = load_file(b / "model.safetensors")
    sd[key] = sd[key].view(torch.float16)  # bit-identical bytes, read as float16 instead of bfloat16
    save_file(sd, b / "model.safetensors", metadata={"format": "pt"})
    report = tieconv.diff(FIXTURES / "llama-untied", b)
    (d,) = report.values
    assert (d.parameter, d.kind, d.a_dtype, d.b_dtype) == (key, "dtype", "BF16", "F16")
    assert d.max_abs_diff is not None and d.max_abs_diff > 0


def test_a_config_side_effect_t5_output_scaling(fixture_copy):
    """T5 in transformers 5: the file's tie_word_embeddings false switches off the output scaling."""
    b = fixture_copy("t5-untied")
    config = json.loads((b / "config.json").read_text())
    config["tie_word_embeddings"] = False
    del config["scale_decoder_outputs"]
    (b / "config.json").write_text(json.dumps(config))
    report = tieconv.diff(FIXTURES / "t5-untied", b)
    assert not report.equivalent
    assert [(c.field, c.a, c.b) for c in report.config] == [("scale_decoder_outputs", True, False)]
    assert not (report.values or report.random)


def test_ignored_config_fields_and_class_defaults(fixture_copy):
    b = fixture_copy("llama-untied")
    config = json.loads((b / "config.json").read_text())
    config.update(transformers_version="0.0.1", _name_or_path="somewhere", _commit_hash="abc")
    (b / "config.json").write_text(json.dumps(config))
    assert tieconv.diff(FIXTURES / "llama-untied", b).equivalent
    config["rms_norm_eps"] = 0.5
    (b / "config.json").write_text(json.dumps(config))
    report = tieconv.diff(FIXTURES / "llama-untied", b)
    assert [(c.field, c.b) for c in report.config] == [("rms_norm_eps", 0.5)]


def test_expected_changes_keep_head(tmp_path):
    out = tmp_path / "kept-head"
    result = tieconv.tie(FIXTURES / "llama-untied", out, keep="head")
    a, b = tieconv.inspect(FIXTURES / "llama-untied"), tieconv.inspect(out)
    plain = compare_reports(a, b)
    assert [d.parameter for d in plain.values] == ["model.embed_tokens.weight"]
    declared = compare_reports(a, b, expected_values={"model.embed_tokens.weight": "lm_head.weight"},
                               expected_config=result.plan.config_changes)
    assert declared.equivalent, declared.differences
    wrong = compare_reports(a, b, expected_values={"lm_head.weight": "model.embed_tokens.weight"},
                            expected_config={"tie_word_embeddings": False})
    assert {d.parameter for d in wrong.values} == {"model.embed_tokens.weight", "lm_head.weight"}
    assert [(c.field, c.b, c.expected) for c in wrong.config] == [("tie_word_embeddings", True, False)]


def test_expected_changes_keep_embed(tmp_path):
    out = tmp_path / "kept-embed"
    result = tieconv.tie(FIXTURES / "llama-conflict", out, keep="embed")
    a, b = tieconv.inspect(FIXTURES / "llama-conflict"), tieconv.inspect(out)
    assert [d.parameter for d in compare_reports(a, b).values] == ["lm_head.weight"]
    declared = compare_reports(a, b, expected_values={"lm_head.weight": "model.embed_tokens.weight"},
                               expected_config=result.plan.config_changes)
    assert declared.equivalent, declared.differences


def test_assume_tied_repair_is_the_declared_change(tmp_path):
    out = tmp_path / "repaired"
    result = tieconv.tie(FIXTURES / "llama-head-missing", out, assume_tied=True)
    a, b = tieconv.inspect(FIXTURES / "llama-head-missing"), tieconv.inspect(out)
    assert [(r.parameter, r.side) for r in compare_reports(a, b).random] == [("lm_head.weight", "a")]
    declared = compare_reports(a, b, expected_values={"lm_head.weight": "model.embed_tokens.weight"},
                               expected_config=result.plan.config_changes)
    assert declared.equivalent, declared.differences


def test_tensors_only_one_side_stores(fixture_copy):
    b = fixture_copy("llama-untied")
    sd = load_file(b / "model.safetensors")
    sd["model.extra.weight"] = torch.zeros(4)
    del sd["model.layers.0.mlp.down_proj.weight"]
    save_file(sd, b / "model.safetensors", metadata={"format": "pt"})
    report = tieconv.diff(FIXTURES / "llama-untied", b)
    assert [(r.parameter, r.side) for r in report.random] == [("model.layers.0.mlp.down_proj.weight", "b")]
    assert [(s.key, s.side) for s in report.stored_on_one_side] == [("model.extra.weight", "b")]
    assert "ignores it" in report.stored_on_one_side[0].reason


def test_tensors_only_one_side_stores_without_a_config(tmp_path):
    sd = load_file(FIXTURES / "single-files" / "llama-untied.safetensors")
    sd["extra.weight"] = torch.zeros(4)
    save_file(sd, tmp_path / "b.safetensors")
    report = tieconv.diff(FIXTURES / "single-files" / "llama-untied.safetensors", tmp_path / "b.safetensors")
    assert [(s.key, s.side) for s in report.stored_on_one_side] == [("extra.weight", "b")]


def test_tensors_under_unknown_names_are_compared_as_stored(tmp_path):
    """inspect cannot name an embedding here; diff still compares every tensor, without tie rules."""
    tensors = {"encoder.proj.weight": torch.randn(8, 4), "decoder.out.weight": torch.randn(4, 8)}
    save_file(tensors, tmp_path / "a.safetensors")
    save_file(tensors, tmp_path / "b.safetensors")
    report = tieconv.diff(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert report.equivalent and report.parameters == 2
    assert any("no tie rules applied" in n for n in report.notes)
    flip_byte(tmp_path / "b.safetensors", "decoder.out.weight", at=4)
    assert [d.parameter for d in tieconv.diff(tmp_path / "a.safetensors", tmp_path / "b.safetensors").values] == [
        "decoder.out.weight"]


def test_gguf_pairs(tmp_path):
    from ..formats.test_gguf_file import write_gguf

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir(), (tmp_path / "c").mkdir()
    a = write_gguf(tmp_path / "a" / "m.gguf", head="same")
    tieconv.tie(a, tmp_path / "tied.gguf")
    assert tieconv.diff(a, tmp_path / "tied.gguf").equivalent
    assert tieconv.diff(a, write_gguf(tmp_path / "b" / "m.gguf", head=None)).equivalent  # llama.cpp's fallback
    report = tieconv.diff(a, write_gguf(tmp_path / "c" / "m.gguf", head="different"))
    assert [d.parameter for d in report.values] == ["output.weight"]

    import gguf

    writer = gguf.GGUFWriter(tmp_path / "ctx.gguf", arch="llama")  # the same tensors, another context length
    reader = gguf.GGUFReader(a)
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(16)
    writer.add_string("general.name", "tiny")
    writer.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(64)])
    for t in reader.tensors:
        writer.add_tensor(t.name, t.data.copy())
    finish_gguf(writer)
    report = tieconv.diff(a, tmp_path / "ctx.gguf")
    assert [(c.field, c.a, c.b) for c in report.config] == [("llama.context_length", 32, 64)]


def test_a_hub_repo_against_a_local_copy(hub, tmp_path, xdg):  # noqa: F811 - pytest passes the fixtures
    """Remote headers and byte ranges (olah on loopback) against local files: the same model."""
    out = hub_cli(["diff", "org/tiny-sharded", FIXTURES / "llama-untied", "--json", "--check"], endpoint=hub,
                  home=tmp_path / "hf", xdg=xdg, check=True)
    doc = json.loads(out.stdout)
    assert doc["equivalent"] is True and doc["bytes_compared"] > 0
    out = hub_cli(["diff", "org/tiny-dup", FIXTURES / "llama-tieable", "--check"], endpoint=hub, home=tmp_path / "hf",
                  xdg=xdg)
    # duplicated vs tieable: the same values; the flag only decides what is shared (a note, not a difference)
    assert out.returncode == 0 and "config tie_word_embeddings: true in A, false in B; with the stored tensors it " \
        "only decides what is shared" in out.stdout


# ---------------------------------------------------------------- refusals and the CLI


@pytest.mark.parametrize("a,b", [
    ("llama-untied", "single-files/llama-untied.safetensors"),
    ("meta-llama", "llama-untied"),
])
def test_different_loader_families_are_refused(a, b):
    with pytest.raises(InputError, match="different loader families"):
        tieconv.diff(FIXTURES / a, FIXTURES / b)
    result = run("diff", FIXTURES / a, FIXTURES / b)
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "different loader families" in result.output


def test_cli_exit_codes_and_check():
    same = ("diff", FIXTURES / "llama-untied", FIXTURES / "llama-untied-sharded")
    differ = ("diff", FIXTURES / "llama-tieable", FIXTURES / "llama-head-missing")
    assert run(*same).exit_code == 0 and "equivalent" in run(*same).output
    assert run(*same, "--check").exit_code == 0
    result = run(*differ)
    assert result.exit_code == 0 and "NOT equivalent" in result.output and "random" in result.output
    assert run(*differ, "--check").exit_code == 1
    assert run("diff", FIXTURES / "llama-untied", FIXTURES / "no-such-model").exit_code == 2


def test_cli_json():
    result = run("diff", FIXTURES / "llama-tieable", FIXTURES / "llama-head-missing", "--json")
    doc = json.loads(result.output)
    assert set(doc) == {"schema_version", "a", "b", "family", "equivalent", "parameters", "bytes_compared",
                        "sample_bytes", "values", "random", "stored_on_one_side", "config", "notes"}
    assert doc["equivalent"] is False and doc["family"] == "transformers"
    assert doc["random"] == [{"parameter": "lm_head.weight", "side": "b",
                              "reason": "the flag unties and it is not stored"}]
    assert doc == tieconv.diff(FIXTURES / "llama-tieable", FIXTURES / "llama-head-missing").to_dict() | {
        "a": str(FIXTURES / "llama-tieable"), "b": str(FIXTURES / "llama-head-missing")}


def test_memory_stays_flat_on_a_large_checkpoint(tmp_path):
    """Two 512 MB (sparse) checkpoints compared in chunks: peak memory far below one tensor."""
    header = json.dumps({"model.embed_tokens.weight": {"dtype": "F32", "shape": [128, 1 << 20], "data_offsets": [0, 512 << 20]},
                         "__metadata__": {"format": "pt"}}).encode()
    header += b" " * (-len(header) % 8)
    for name in ("a.safetensors", "b.safetensors"):
        with open(tmp_path / name, "wb") as f:
            f.write(len(header).to_bytes(8, "little") + header)
            f.truncate(8 + len(header) + (512 << 20))
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forked test process across exec
    code = ("import re, sys, tieconv; r = tieconv.diff(sys.argv[1], sys.argv[2]); "
            "print(r.equivalent, re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")],
                         capture_output=True, text=True, env=env, check=True).stdout.split()
    assert out[0] == "True"
    assert int(out[1]) // 1024 < 100, out  # MB; the tensor alone is 512 MB


def test_a_flag_that_only_decides_sharing_is_a_note(tmp_path):
    tieconv.tie(FIXTURES / "llama-duplicated", tmp_path / "tied")
    tieconv.untie(tmp_path / "tied", tmp_path / "untied")
    report = tieconv.diff(tmp_path / "tied", tmp_path / "untied")
    assert report.equivalent and report.config == []
    assert any("tie_word_embeddings" in n and "only decides what is shared" in n for n in report.notes)
    # the same flag flip without the head stored: the head starts at random, a difference
    report = tieconv.diff(FIXTURES / "llama-tied", FIXTURES / "llama-head-missing")
    assert not report.equivalent and [r.parameter for r in report.random] == ["lm_head.weight"]


def _linked_copy(tmp_path):
    """A copy of a sharded fixture (a) and a folder of hard links to every file of it (b)."""
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(FIXTURES / "llama-untied-sharded", a)
    b.mkdir()
    for f in a.iterdir():
        os.link(f, b / f.name)
    return a, b


def test_hard_linked_shards_are_equal_without_reading_them(tmp_path, monkeypatch):
    """`tie --link` links unchanged shards: one file on disk, so verification reads none of its bytes."""
    a, b = _linked_copy(tmp_path)
    from tieconv.formats.checkpoint import Checkpoint

    reads: list[str] = []
    real_range, real_iter = Checkpoint.read_range, Checkpoint.iter_bytes
    monkeypatch.setattr(Checkpoint, "read_range", lambda self, k, *a: reads.append(k) or real_range(self, k, *a))
    monkeypatch.setattr(Checkpoint, "iter_bytes", lambda self, k, *a: reads.append(k) or real_iter(self, k, *a))
    report = tieconv.diff(a, b)
    assert report.equivalent and reads == [] and report.bytes_compared == 0
    assert any("same bytes of one file on both sides" in n for n in report.notes)
    # a copy (another inode) is read, and a changed byte in it is found
    (b / "model-00001-of-00003.safetensors").unlink()
    shutil.copy(a / "model-00001-of-00003.safetensors", b / "model-00001-of-00003.safetensors")
    flipped = open_checkpoint(b).tensors_in("model-00001-of-00003.safetensors")[0].key
    flip_byte(b, flipped)
    report = tieconv.diff(a, b)
    assert [d.parameter for d in report.values] == [flipped] and reads


def test_a_hard_linked_shard_is_still_compared_where_its_key_is_expected_to_change(tmp_path):
    """Equal unread holds for a key each loader reads as itself and that is expected to stay: told that B's
    embedding should hold A's head (`tie --keep head`), the linked shard holding it is compared, and differs."""
    a, b = _linked_copy(tmp_path)
    report = compare_reports(tieconv.inspect(a), tieconv.inspect(b),
                             expected_values={"model.embed_tokens.weight": "lm_head.weight"})
    assert [(d.parameter, d.a_key, d.b_key) for d in report.values] == [
        ("model.embed_tokens.weight", "lm_head.weight", "model.embed_tokens.weight")]
    assert any("same bytes of one file on both sides" in n for n in report.notes)  # the other keys
