from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
import transformers
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import tieconv
from tieconv.cli import main
from tieconv.errors import OutputError, RefusedError
from tieconv.inspection.verdicts import TABLE, Done, Member

from ..conftest import FIXTURES
from ..helpers import VERDICT_FIXTURES, stored_tensors, write_embed_missing_untied

transformers.logging.set_verbosity_error()
IDS = torch.tensor([[1, 5, 9, 3, 7]])


def logits(path) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        return model(IDS).logits


def tree_bytes(path):
    return {p.relative_to(path): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", ["llama-duplicated", "llama-tieable"])
def test_tie_drops_the_copy_and_keeps_outputs(tmp_path, name):
    src = FIXTURES / name
    before = tree_bytes(src)
    result = tieconv.tie(src, tmp_path / "out")
    report = tieconv.inspect(src)
    assert result.verdict == "tied"
    assert result.bytes_saved == report.reclaimable_bytes == 64 * 16 * 2
    assert sorted(result.files_written) == sorted(str(p) for p in (tmp_path / "out").iterdir())
    sd = load_file(tmp_path / "out" / "model.safetensors")
    assert "lm_head.weight" not in sd
    assert json.loads((tmp_path / "out" / "config.json").read_text())["tie_word_embeddings"] is True
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    torch.testing.assert_close(logits(tmp_path / "out"), logits(src), rtol=0, atol=0)
    assert tree_bytes(src) == before  # the input is untouched


def test_tie_sharded_keeps_shards_and_index(tmp_path):
    src = FIXTURES / "llama-untied-sharded"
    result = tieconv.tie(src, tmp_path / "out", keep="embed")
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert "lm_head.weight" not in index["weight_map"]
    assert all((tmp_path / "out" / f).is_file() for f in set(index["weight_map"].values()))
    assert result.verdict == "tied" and tieconv.inspect(tmp_path / "out").layout.startswith("hf-safetensors")
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_tie_refuses_different_matrices_with_the_distance(tmp_path):
    with pytest.raises(RefusedError, match="max abs difference .* cosine similarity .* --keep embed or --keep head"):
        tieconv.tie(FIXTURES / "llama-conflict", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_tie_keep_head_stores_the_head_under_the_embedding_key(tmp_path):
    src = FIXTURES / "llama-untied"
    tieconv.tie(src, tmp_path / "out", keep="head")
    before = load_file(src / "model.safetensors")
    after = load_file(tmp_path / "out" / "model.safetensors")
    assert torch.equal(after["model.embed_tokens.weight"], before["lm_head.weight"])
    assert "lm_head.weight" not in after


def test_head_missing_needs_assume_tied(tmp_path):
    with pytest.raises(RefusedError, match="--assume-tied"):
        tieconv.tie(FIXTURES / "llama-head-missing", tmp_path / "out")
    result = tieconv.tie(FIXTURES / "llama-head-missing", tmp_path / "out", assume_tied=True)
    assert result.verdict == "tied" and result.bytes_saved == 0


def test_embed_missing_tie_moves_the_head(tmp_path):
    result = tieconv.tie(FIXTURES / "llama-embed-missing", tmp_path / "out")
    assert result.verdict == "tied"
    torch.testing.assert_close(logits(tmp_path / "out"), logits(FIXTURES / "llama-embed-missing"), rtol=0, atol=0)


def test_nothing_to_do_writes_nothing(tmp_path):
    result = tieconv.tie(FIXTURES / "llama-tied", tmp_path / "out")
    assert result.files_written == [] and result.plan.nothing_to_do and not (tmp_path / "out").exists()
    result = tieconv.untie(FIXTURES / "llama-untied", tmp_path / "out")
    assert result.files_written == [] and not (tmp_path / "out").exists()
    forced = tieconv.tie(FIXTURES / "llama-tied", tmp_path / "out", force=True)
    assert forced.files_written and forced.verdict == "tied"


def test_untie_then_fine_tunable(tmp_path):
    src = FIXTURES / "llama-tied"
    result = tieconv.untie(src, tmp_path / "out")
    assert result.verdict == "tieable" and result.bytes_saved == -64 * 16 * 2
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    torch.testing.assert_close(logits(tmp_path / "out"), logits(src), rtol=0, atol=0)


def test_untie_bart_materialises_every_target(tmp_path):
    src = FIXTURES / "bart-tied"
    result = tieconv.untie(src, tmp_path / "out")
    sd = load_file(tmp_path / "out" / "model.safetensors")
    for key in ("lm_head.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight"):
        assert torch.equal(sd[key], sd["model.shared.weight"])
    assert result.bytes_saved == -3 * 64 * 16 * 4
    model = transformers.BartForConditionalGeneration.from_pretrained(tmp_path / "out")
    ref = transformers.BartForConditionalGeneration.from_pretrained(src)
    assert torch.equal(model.model.encoder.embed_tokens.weight, ref.model.shared.weight)
    with torch.no_grad():
        torch.testing.assert_close(model(IDS, decoder_input_ids=IDS).logits, ref(IDS, decoder_input_ids=IDS).logits)


def test_untie_conflict_keeps_both(tmp_path):
    result = tieconv.untie(FIXTURES / "llama-conflict", tmp_path / "out")
    assert result.verdict == "untied"
    torch.testing.assert_close(logits(tmp_path / "out"), logits(FIXTURES / "llama-conflict"), rtol=0, atol=0)


def test_untie_refusals(tmp_path):
    with pytest.raises(RefusedError, match="no head to keep"):
        tieconv.untie(FIXTURES / "llama-head-missing", tmp_path / "out")
    with pytest.raises(RefusedError, match="no output head"):
        tieconv.untie(FIXTURES / "bert-encoder", tmp_path / "out")
    with pytest.raises(RefusedError, match="no output head"):
        tieconv.tie(FIXTURES / "bert-encoder", tmp_path / "out")


def test_untie_t5_pins_scaling_and_reports_duplicated(tmp_path):
    result = tieconv.untie(FIXTURES / "t5-tied", tmp_path / "out")
    assert result.verdict == "duplicated" and any("re-ties" in w for w in result.warnings)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["scale_decoder_outputs"] is True


def test_bin_input_is_written_as_safetensors(tmp_path):
    result = tieconv.untie(FIXTURES / "gpt2-bin", tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").is_file() and result.verdict == "tieable"
    assert any("safetensors" in w for w in result.warnings)
    model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out")
    assert model.lm_head.weight is not model.transformer.wte.weight


def test_single_files(tmp_path):
    result = tieconv.tie(FIXTURES / "single-files" / "llama-untied.safetensors", tmp_path / "x.safetensors", keep="embed")
    assert result.verdict == "tied" and (tmp_path / "x.safetensors").is_file()
    result = tieconv.untie(FIXTURES / "meta-llama" / "consolidated.00.pth", tmp_path / "y.pth", force=True)
    assert result.files_written == [str(tmp_path / "y.pth")]
    result = tieconv.untie(FIXTURES / "torchtune", tmp_path / "tt")
    sd = torch.load(tmp_path / "tt" / "model-00001-of-00001.pt", weights_only=True)
    assert torch.equal(sd["output.weight"], sd["tok_embeddings.weight"])
    assert sd["output.weight"].untyped_storage().data_ptr() != sd["tok_embeddings.weight"].untyped_storage().data_ptr()


def test_existing_output_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(OutputError, match="already exists"):
        tieconv.tie(FIXTURES / "llama-duplicated", tmp_path / "out")


def test_dry_run_writes_nothing_and_prints_the_plan(tmp_path):
    result = CliRunner().invoke(main, ["tie", str(FIXTURES / "llama-duplicated"), str(tmp_path / "out"),
                                       "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["plan"]["dropped"] == ["lm_head.weight"] and doc["bytes_saved"] == 2048 and doc["files_written"] == []
    assert not (tmp_path / "out").exists()


def test_cli_tie_and_refusal(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(main, ["tie", str(FIXTURES / "llama-duplicated"), str(tmp_path / "out")])
    assert ok.exit_code == 0 and "saved 2.0 KB (2048 bytes)" in ok.output
    refused = runner.invoke(main, ["tie", str(FIXTURES / "llama-conflict"), str(tmp_path / "out2")])
    assert refused.exit_code == 2 and "--keep" in refused.output and len(refused.output.strip().splitlines()) == 1
    assert "tieconv tie fixtures/llama-duplicated" in runner.invoke(main, ["tie", "-h"]).output


def test_refusals_and_failures_leave_nothing_behind(tmp_path, monkeypatch):
    with pytest.raises(RefusedError):
        tieconv.tie(FIXTURES / "llama-conflict", tmp_path / "out")
    import tieconv.conversion.convert as convert
    from tieconv.errors import VerificationError

    def bad_verify(*args, **kwargs):
        raise VerificationError("forced failure")

    monkeypatch.setattr(convert, "_verify", bad_verify)
    with pytest.raises(VerificationError):
        tieconv.tie(FIXTURES / "llama-duplicated", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_output_must_not_overlap_the_input(tmp_path, fixture_copy):
    src = fixture_copy("llama-duplicated")
    for dst in (src, src / "inside", tmp_path):
        with pytest.raises(OutputError, match="input"):
            tieconv.tie(src, dst, overwrite=True)


def test_overwrite_replaces_only_when_complete(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    result = tieconv.tie(FIXTURES / "llama-duplicated", out, overwrite=True)
    assert result.verdict == "tied" and not (out / "old.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_sharded_untie_keeps_names_links_unchanged_shards_and_rewrites_the_index(tmp_path, fixture_copy):
    src = fixture_copy("llama-tied-sharded")
    index = json.loads((src / "model.safetensors.index.json").read_text())
    index["metadata"]["total_parameters"] = 123
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    embed_file = index["weight_map"]["model.embed_tokens.weight"]
    result = tieconv.untie(src, tmp_path / "out", link=True)
    out_index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert set(out_index["weight_map"].values()) == set(index["weight_map"].values())  # names kept
    assert out_index["weight_map"]["lm_head.weight"] == embed_file  # the copy sits beside its source
    sd = {}
    for name in set(out_index["weight_map"].values()):
        sd.update(load_file(tmp_path / "out" / name))
    assert out_index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in sd.values())
    assert out_index["metadata"]["total_parameters"] == sum(t.numel() for t in sd.values())
    unchanged = sorted(set(index["weight_map"].values()) - {embed_file})
    assert unchanged and sorted(result.linked) == unchanged
    for name in unchanged:
        assert (tmp_path / "out" / name).stat().st_ino == (src / name).stat().st_ino
    assert (tmp_path / "out" / embed_file).stat().st_ino != (src / embed_file).stat().st_ino
    assert any("ARE the input's files" in w for w in result.warnings)
    torch.testing.assert_close(logits(tmp_path / "out"), logits(src), rtol=0, atol=0)


def test_the_output_index_is_written_as_json_dumps_writes_it(tmp_path, fixture_copy):
    """The weight map's lines are put together by tieconv (json.dumps with an indent is slow): byte for byte
    what `json.dumps(index, indent=2)` gives, keys sorted and escaped, the input's other metadata kept."""
    src = fixture_copy("llama-tied-sharded")
    index = json.loads((src / "model.safetensors.index.json").read_text())
    shard = index["weight_map"]["model.norm.weight"]
    odd = 'extra.\u00e9"\\\u2028\U0001f600.weight'  # non-ASCII, a quote, a backslash, a line separator
    save_file({**load_file(src / shard), odd: torch.ones(2)}, src / shard)
    index["weight_map"][odd] = shard
    index["metadata"]["note"] = {"by": "caf\u00e9", "n": [1, 2.5, None, True]}
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    tieconv.untie(src, tmp_path / "out", link=True)
    text = (tmp_path / "out" / "model.safetensors.index.json").read_text()
    written = json.loads(text)
    assert text == json.dumps(written, indent=2) + "\n"
    assert list(written["weight_map"]) == sorted(written["weight_map"]) and written["weight_map"][odd] == shard
    assert written["metadata"]["note"] == index["metadata"]["note"]


def test_sharded_tie_renumbers_when_a_shard_empties(tmp_path):
    src = FIXTURES / "llama-untied-sharded"
    index = json.loads((src / "model.safetensors.index.json").read_text())
    tieconv.tie(src, tmp_path / "out", keep="embed")
    out_index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    n = len(set(out_index["weight_map"].values()))
    assert n == len(set(index["weight_map"].values())) - 1
    assert set(out_index["weight_map"].values()) == {f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)}


def test_dry_run_plan_matches_the_real_run(tmp_path):
    dry = tieconv.untie(FIXTURES / "bart-tied", tmp_path / "out", dry_run=True)
    real = tieconv.untie(FIXTURES / "bart-tied", tmp_path / "out")
    assert dry.plan.to_dict() == real.plan.to_dict()
    assert dry.bytes_saved == real.bytes_saved and dry.verdict == real.verdict


@pytest.mark.parametrize("verify", ["full", "none"])
def test_verify_modes(tmp_path, verify):
    result = tieconv.untie(FIXTURES / "llama-tied-sharded", tmp_path / "out", verify=verify)
    assert result.verified == verify and result.verdict == "tieable"


def test_nanogpt_keeps_training_state_or_says_what_it_leaves_out(tmp_path):
    result = tieconv.untie(FIXTURES / "nanogpt" / "ckpt.pt", tmp_path / "ckpt.pt")
    obj = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert obj["model_args"]["n_layer"] == 1 and obj["iter_num"] == 10 and "optimizer" in obj
    m = obj["model"]
    assert torch.equal(m["_orig_mod.lm_head.weight"], m["_orig_mod.transformer.wte.weight"])
    assert m["_orig_mod.lm_head.weight"].data_ptr() != m["_orig_mod.transformer.wte.weight"].data_ptr()
    assert result.verdict == "tieable"
    assert any("optimizer" in w and "no longer matches" in w for w in result.warnings)
    # safetensors cannot hold the training entries: refused, naming them, nothing written
    with pytest.raises(OutputError, match="optimizer, model_args, iter_num, best_val_loss, config"):
        tieconv.untie(FIXTURES / "nanogpt" / "ckpt.pt", tmp_path / "ckpt.safetensors")
    assert not (tmp_path / "ckpt.safetensors").exists()
    result = tieconv.untie(FIXTURES / "nanogpt" / "ckpt.pt", tmp_path / "lean.pt", drop_optimizer=True)
    obj = torch.load(tmp_path / "lean.pt", weights_only=True)
    assert "optimizer" not in obj and obj["iter_num"] == 10 and obj["config"] == torch.load(
        FIXTURES / "nanogpt" / "ckpt.pt", weights_only=True)["config"]
    assert result.plan.left_out == {"optimizer": "optimizer state (--drop-optimizer)"}
    assert any("left out: optimizer" in w for w in result.warnings)


def test_bert_mlm_untie_materialises_the_bias(tmp_path):
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(transformers.BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    model.save_pretrained(tmp_path / "bert")
    tieconv.untie(tmp_path / "bert", tmp_path / "out")
    sd = load_file(tmp_path / "out" / "model.safetensors")
    assert torch.equal(sd["cls.predictions.decoder.weight"], sd["bert.embeddings.word_embeddings.weight"])
    loaded = transformers.BertForMaskedLM.from_pretrained(tmp_path / "out")
    with torch.no_grad():
        torch.testing.assert_close(loaded(IDS).logits, model.eval()(IDS).logits, rtol=0, atol=0)


def test_multimodal_flag_set_at_both_levels(tmp_path):
    from ..helpers import embed_and_head, llama_config, write_config

    folder = tmp_path / "llava"
    write_config(folder, architectures=["LlavaForConditionalGeneration"], model_type="llava",
                 text_config={"model_type": "llama", "tie_word_embeddings": True,
                              **{k: v for k, v in llama_config().items() if k not in ("architectures", "model_type")}},
                 vision_config={"model_type": "clip_vision_model", "num_hidden_layers": 1, "hidden_size": 16,
                                "intermediate_size": 32, "num_attention_heads": 2, "image_size": 8, "patch_size": 4})
    embed, _ = embed_and_head()
    save_file({"model.language_model.embed_tokens.weight": embed}, folder / "model.safetensors")
    result = tieconv.untie(folder, tmp_path / "out")
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False and cfg["text_config"]["tie_word_embeddings"] is False
    assert result.verdict == "tieable" and "lm_head.weight" in load_file(tmp_path / "out" / "model.safetensors")


def test_other_files_are_copied_unchanged(tmp_path, fixture_copy):
    src = fixture_copy("llama-duplicated")
    (src / "tokenizer.json").write_text('{"x": 1}')
    (src / "README.md").write_text("# model")
    tieconv.tie(src, tmp_path / "out")
    assert (tmp_path / "out" / "tokenizer.json").read_text() == '{"x": 1}'
    assert (tmp_path / "out" / "README.md").read_text() == "# model"
    meta = __import__("tieconv.formats.safetensors_header", fromlist=["x"]).read_header(tmp_path / "out" / "model.safetensors").metadata
    assert meta == {"format": "pt"}


def any_logits(path) -> torch.Tensor:
    cfg = transformers.AutoConfig.from_pretrained(path)
    if cfg.is_encoder_decoder:
        model = transformers.AutoModelForSeq2SeqLM.from_pretrained(path)
        with torch.no_grad():
            return model(IDS, decoder_input_ids=IDS).logits
    model = transformers.AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        return model(IDS).logits


@pytest.mark.parametrize(
    "action,name",
    [("untie", "llama-tied"), ("untie", "llama-tied-sharded"), ("untie", "llama-duplicated"),
     ("untie", "gpt2-tied"), ("untie", "gpt2-bin"), ("untie", "gpt2-bin-sharded"), ("untie", "t5-tied"),
     ("untie", "bart-tied"), ("tie", "llama-duplicated"), ("tie", "llama-tieable"), ("tie", "llama-embed-missing")],
)
def test_lossless_conversions_give_bit_identical_logits(tmp_path, action, name):
    src = FIXTURES / name
    getattr(tieconv, action)(src, tmp_path / "out")
    torch.testing.assert_close(any_logits(tmp_path / "out"), any_logits(src), rtol=0, atol=0)


def test_gemma_untie_keeps_the_input_scaling_and_warns_about_runtimes_that_tie_it(tmp_path):
    torch.manual_seed(0)
    gemma = transformers.GemmaForCausalLM(transformers.GemmaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8))
    gemma.save_pretrained(tmp_path / "gemma")
    assert tieconv.inspect(tmp_path / "gemma").verdict == "tied"
    result = tieconv.untie(tmp_path / "gemma", tmp_path / "out")
    # which runtimes ignore the stored head comes from the runtime tables (observed: vLLM 0.32 uses it)
    still = [w for w in result.warnings if w.startswith("after the conversion these runtimes still use")]
    assert len(still) == 1 and "llama.cpp uses the embedding" in still[0] and "vLLM" not in still[0]
    torch.testing.assert_close(any_logits(tmp_path / "out"), any_logits(tmp_path / "gemma"), rtol=0, atol=0)


# ---------------------------------------------------------------- nothing lost: each user mistake refused


def cli_run(*args):
    return CliRunner().invoke(main, list(map(str, args)))


@pytest.mark.parametrize("args,option", [
    (["tie", "--embed", "model.embed_tokens.weigth", "--head", "lm_head.weight"], "--embed"),
    (["untie", "--head", "lm_head.weigth"], "--head"),
])
def test_a_typo_in_a_key_is_refused_naming_the_closest_key(tmp_path, args, option):
    action, *options = args
    result = cli_run(action, FIXTURES / "llama-untied", tmp_path / "out", *options)
    assert result.exit_code == 2, result.output
    assert f"{option} " in result.output and "is not a stored key; did you mean" in result.output
    assert not (tmp_path / "out").exists()
    result = cli_run("inspect", FIXTURES / "llama-untied", "--embed", "nope.weight")
    assert result.exit_code == 2 and "is not a stored key" in result.output


def test_an_unstored_head_override_may_name_the_key_the_loader_reads(tmp_path):
    assert tieconv.inspect(FIXTURES / "llama-tied", head="lm_head.weight").verdict == "tied"
    with pytest.raises(tieconv.InputError, match="not a matrix"):
        tieconv.inspect(FIXTURES / "llama-untied", embed="model.norm.weight")


SINGLE_INPUTS = {
    "safetensors": FIXTURES / "single-files" / "llama-untied.safetensors",
    "meta-pth": FIXTURES / "meta-llama" / "consolidated.00.pth",
    "torchtune-pt": FIXTURES / "torchtune" / "model-00001-of-00001.pt",
}


@pytest.mark.parametrize("suffix,layout", [(".safetensors", "safetensors-file"), (".pt", "torch-file"),
                                           (".pth", "torch-file"), (".bin", "torch-file"), (".ckpt", "torch-file")])
@pytest.mark.parametrize("name", sorted(SINGLE_INPUTS))
def test_every_file_output_kind_reads_back(tmp_path, name, suffix, layout):
    src = SINGLE_INPUTS[name]
    out = tmp_path / f"out{suffix}"
    action = "untie" if tieconv.inspect(src).verdict == "tied" else "tie"
    getattr(tieconv, action)(src, out, **({"keep": "embed"} if action == "tie" else {}))
    report = tieconv.inspect(out)
    assert report.layout == layout
    assert report.verdict == ("tied" if action == "tie" else "tieable")
    if suffix != ".safetensors":
        torch.load(out, weights_only=True)  # a zip torch file anyone can load safely


def test_output_names_that_cannot_be_right_are_refused(tmp_path):
    src = FIXTURES / "single-files" / "llama-untied.safetensors"
    for out, words in [(f"{tmp_path}/outdir/", "IN is a file, so OUT is a file"),
                       (tmp_path / "x.gguf", "only a GGUF input"), (tmp_path / "x.txt", "names no format")]:
        result = cli_run("tie", src, out, "--keep", "embed")
        assert result.exit_code == 2 and words in result.output, result.output
    result = cli_run("untie", FIXTURES / "nanogpt", tmp_path / "nano.pt")
    assert result.exit_code == 2 and "IN is a folder, so OUT is a folder" in result.output
    (tmp_path / "afile").write_text("mine")
    result = cli_run("untie", FIXTURES / "llama-tied", tmp_path / "afile", "--overwrite")
    assert result.exit_code == 2 and "is a file" in result.output
    assert (tmp_path / "afile").read_text() == "mine"
    (tmp_path / "adir.safetensors").mkdir()
    result = cli_run("tie", src, tmp_path / "adir.safetensors", "--keep", "embed", "--overwrite")
    assert result.exit_code == 2 and "is a folder" in result.output
    assert list(tmp_path.glob("*tieconv-*")) == []


def test_unwritable_destination_names_the_folder(tmp_path):
    result = cli_run("tie", FIXTURES / "llama-duplicated", "/proc/out")
    assert result.exit_code == 2 and "/proc" in result.output and "lock" not in result.output, result.output
    result = cli_run("tie", FIXTURES / "llama-duplicated", tmp_path / "no" / "out")
    assert result.exit_code == 2 and "does not exist" in result.output
    long_name = tmp_path / ("x" * 250)
    result = cli_run("tie", FIXTURES / "llama-duplicated", long_name)
    assert result.exit_code == 2 and "too long" in result.output


def test_nothing_to_do_checks_out_and_reports_true_sizes(tmp_path):
    result = cli_run("tie", FIXTURES / "llama-tied", tmp_path / "out", "--json")
    doc = json.loads(result.output)
    report = tieconv.inspect(FIXTURES / "llama-tied")
    assert doc["nothing_to_do"] is True and doc["bytes"]["before"] == report.bytes.total > 0
    assert doc["parameters"]["before"] == report.parameters.stored > 0 and not (tmp_path / "out").exists()
    result = cli_run("tie", FIXTURES / "llama-tied", tmp_path / "missing" / "out")
    assert result.exit_code == 2  # an invalid OUT is said even when there is nothing to do


def test_subfolders_and_other_files_are_carried(tmp_path, fixture_copy):
    src = fixture_copy("llama-duplicated")
    (src / "1_Pooling").mkdir()
    (src / "1_Pooling" / "config.json").write_text('{"pooling": "mean"}')
    (src / "tokenizer" / "deep").mkdir(parents=True)
    (src / "tokenizer" / "deep" / "vocab.txt").write_text("a\nb\n")
    (src / "original").mkdir()
    torch.save({"tok_embeddings.weight": torch.ones(2, 2)}, src / "original" / "consolidated.00.pth")
    result = tieconv.tie(src, tmp_path / "out")
    out = tmp_path / "out"
    assert (out / "1_Pooling" / "config.json").read_text() == '{"pooling": "mean"}'
    assert (out / "tokenizer" / "deep" / "vocab.txt").read_text() == "a\nb\n"
    assert (out / "original" / "consolidated.00.pth").read_bytes() == (src / "original" / "consolidated.00.pth").read_bytes()
    assert any("original/consolidated.00.pth" in w and "--drop-other-weights" in w for w in result.warnings)
    result = tieconv.tie(src, tmp_path / "lean", drop_other_weights=True)
    assert not (tmp_path / "lean" / "original" / "consolidated.00.pth").exists()
    assert result.plan.left_out == {"original/consolidated.00.pth": "another weight file (--drop-other-weights)"}
    (src / "escape").symlink_to(tmp_path / "out" / "config.json")
    with pytest.raises(tieconv.TieconvError, match="outside the model folder"):
        tieconv.tie(src, tmp_path / "out3")


def test_sentence_transformers_folder_keeps_its_layout(tmp_path):
    st = tmp_path / "st"
    shutil.copytree(FIXTURES / "llama-duplicated", st / "0_Transformer")
    (st / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "0_Transformer",
                                                  "type": "sentence_transformers.models.Transformer"}]))
    (st / "1_Pooling").mkdir()
    (st / "1_Pooling" / "config.json").write_text("{}")
    tieconv.tie(st, tmp_path / "out")
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == ["0_Transformer", "1_Pooling", "modules.json"]
    assert sorted(os.listdir(out / "0_Transformer")) == ["config.json", "model.safetensors"]
    assert tieconv.inspect(out).verdict == "tied"


def test_torch_file_entries_beside_the_tensors_are_kept(tmp_path):
    embed = torch.randn(8, 4)
    torch.save({"tok_embeddings.weight": embed, "output.weight": embed.clone(), "iter_num": 1200,
                "note": {"lr": 0.1}}, tmp_path / "m.pt")
    tieconv.tie(tmp_path / "m.pt", tmp_path / "out.pt")
    obj = torch.load(tmp_path / "out.pt", weights_only=True)
    assert obj["iter_num"] == 1200 and obj["note"] == {"lr": 0.1} and "output.weight" not in obj
    assert torch.equal(obj["tok_embeddings.weight"], embed)


def test_one_storage_in_a_pickle_is_one_tensor(tmp_path):
    import transformers as tf

    torch.manual_seed(0)
    model = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=16))
    folder = tmp_path / "bin"
    folder.mkdir()
    sd = model.state_dict()
    assert sd["lm_head.weight"].data_ptr() == sd["transformer.wte.weight"].data_ptr()
    torch.save(sd, folder / "pytorch_model.bin")
    cfg = model.config.to_dict()
    cfg["tie_word_embeddings"] = False
    (folder / "config.json").write_text(json.dumps(cfg))
    assert tieconv.inspect(folder).verdict == "tieable"
    result = tieconv.tie(folder, tmp_path / "out")
    assert result.verdict == "tied" and result.plan.dropped == ["lm_head.weight"]
    assert "lm_head.weight" not in load_file(tmp_path / "out" / "model.safetensors")
    result = tieconv.tie(FIXTURES / "gpt2-bin", tmp_path / "forced", force=True)
    assert result.verdict == "tied" and tieconv.inspect(tmp_path / "forced").bytes.reclaimable == 0
    torch.testing.assert_close(logits(tmp_path / "out"), logits(folder), rtol=0, atol=0)
    result = tieconv.tie(FIXTURES / "nanogpt" / "ckpt.pt", tmp_path / "n.pt", force=True)
    m = torch.load(tmp_path / "n.pt", weights_only=True)["model"]
    assert m["_orig_mod.lm_head.weight"].data_ptr() == m["_orig_mod.transformer.wte.weight"].data_ptr()
    assert result.verdict == "tied"


def test_non_regular_inputs_are_refused_at_once(tmp_path):
    fifo = tmp_path / "x.safetensors"
    os.mkfifo(fifo)
    for path in ("/dev/null", fifo):
        for args in (["inspect", path], ["tie", path, tmp_path / "o.safetensors"]):
            result = cli_run(*args)
            assert result.exit_code == 2 and "not a regular file" in result.output, result.output


def test_a_refusal_of_a_dtype_only_difference_says_so(tmp_path):
    from ..helpers import embed_and_head, write_llama

    embed, _ = embed_and_head(dtype=torch.bfloat16)
    folder = write_llama(tmp_path / "m", tie=False, tensors={"model.embed_tokens.weight": embed,
                                                            "lm_head.weight": embed.to(torch.float32)})
    assert tieconv.inspect(folder).equal_after_cast is True
    with pytest.raises(RefusedError, match="same values in different dtypes") as info:
        tieconv.tie(folder, tmp_path / "out")
    assert "changes the model's outputs" not in str(info.value)


def test_summaries_read_as_a_person_writes(tmp_path):
    result = cli_run("untie", FIXTURES / "llama-tied", tmp_path / "out")
    assert "store the tie-map target as its own tensor and untie" in result.output
    assert "(s)" not in result.output and "0 B less" not in result.output


def test_plans_say_which_runtimes_disagree_and_that_they_agree_after(tmp_path):
    plan = tieconv.untie(FIXTURES / "llama-conflict", tmp_path / "out", dry_run=True).plan
    assert "MLX-LM uses the embedding" in plan.runtimes and "they all use the same head" in plan.runtimes
    assert plan.to_dict()["runtimes"] == plan.runtimes
    result = cli_run("untie", FIXTURES / "llama-conflict", tmp_path / "out2", "--dry-run")
    assert "runtimes: Runtimes disagree today" in result.output


# ---------------------------------------------------------------- each verdict does what its row says

VERDICT_CASES = [(v, FIXTURES / name) for v, name in VERDICT_FIXTURES.items() if v != "undecided"]


def _case(tmp_path, verdict, src):
    return (write_embed_missing_untied(tmp_path / "in"), "embed-missing") if src is None else (src, verdict)


@pytest.mark.parametrize("action", ["tie", "untie"])
@pytest.mark.parametrize("verdict,src", VERDICT_CASES + [("embed-missing", None)],
                         ids=[v for v, _ in VERDICT_CASES] + ["embed-missing-flag-unties"])
def test_each_verdict_converts_as_its_table_row_says(tmp_path, action, verdict, src):
    """The row's step, checked on the output's tensors and flag: refusals, what is kept, dropped and stored."""
    src, verdict = _case(tmp_path, verdict, src)
    before = tieconv.inspect(src)
    assert before.verdict == verdict
    step = getattr(TABLE[before.verdict], action)
    convert = getattr(tieconv, action)
    refusal = step.refusal if step.refuses(before.tie_flag.value) else None
    if refusal is not None:
        with pytest.raises(RefusedError):
            convert(src, tmp_path / "refused")
        assert not (tmp_path / "refused").exists()
        if refusal.lifted_by is None:
            return
    keeps = ["embed", "head"] if step.keep is Member.CHOSEN else [None]
    for keep in keeps:
        out = tmp_path / f"out-{keep}"
        options = {"keep": keep} if keep else {}
        if refusal is not None and refusal.lifted_by == "assume_tied":
            options["assume_tied"] = True
        result = convert(src, out, **options)
        done = step.done is Done.ALWAYS or (step.done is Done.NO_COPIES and not before.reclaimable_keys)
        if done:
            assert result.plan.nothing_to_do and not out.exists() and result.files_written == []
            continue
        assert result.verdict == step.result == tieconv.inspect(out).verdict
        assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is step.flag
        stored_in, stored_out = stored_tensors(src), stored_tensors(out)
        e, h = before.embed.key, before.head.key
        if action == "tie":
            kept = {Member.EMBED: e, Member.HEAD: h, Member.CHOSEN: e if keep == "embed" else h}.get(step.keep, e)
            assert h not in stored_out and torch.equal(stored_out[e], stored_in[kept])
            assert not set(before.reclaimable_keys) & set(stored_out)
        else:
            assert h in stored_out and e in stored_out
            for target, source in before.tie_map.items():  # every target stored, with the values a loader read
                read = target if target in stored_in else source
                assert torch.equal(stored_out[target], stored_in[read])
            if e not in stored_in:  # embed-missing: the embedding is a copy of the head
                assert torch.equal(stored_out[e], stored_in[h])
        for key, tensor in stored_in.items():  # nothing else changes
            if key not in (e, h):
                assert torch.equal(stored_out[key], tensor), key


def test_an_undecided_report_is_refused_by_both_conversions():
    from tieconv.conversion.planning import _changes

    report = tieconv.inspect(FIXTURES / "llama-duplicated", compare=False)
    assert report.verdict == "undecided"
    for action in ("tie", "untie"):
        with pytest.raises(RefusedError, match="not compared"):
            _changes(action, report, keep=None, assume_tied=True, force=True)
