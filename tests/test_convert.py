from __future__ import annotations

import json
import shutil

import pytest
import torch
import transformers
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import tieconv
from tieconv.cli import main
from tieconv.errors import OutputError, RefusedError

from .conftest import FIXTURES

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
