from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import tieconv
from tieconv.errors import OutputError
from tieconv.formats.safetensors_header import read_header

from ..conftest import FIXTURES


def test_save_then_load_round_trips_bit_for_bit(tmp_path):
    sd = tieconv.load_state_dict(FIXTURES / "llama-tied")
    result = tieconv.save(sd, tmp_path / "out")
    assert result.dropped == {"lm_head.weight": "model.embed_tokens.weight"}
    back = tieconv.load_state_dict(tmp_path / "out")
    assert set(back) == set(sd)
    for k in sd:
        assert torch.equal(back[k], sd[k]) and back[k].dtype == sd[k].dtype
    unique = {t.untyped_storage().data_ptr(): t.numel() * t.element_size() for t in sd.values()}
    header = read_header(tmp_path / "out" / "model.safetensors")
    assert header.data_size == sum(unique.values())
    assert result.bytes_written == (tmp_path / "out" / "model.safetensors").stat().st_size
    assert header.metadata == {"format": "pt", "lm_head.weight": "model.embed_tokens.weight"}
    assert tieconv.inspect(tmp_path / "out").verdict == "tied"


def test_sharded_save_with_a_size_string(tmp_path):
    sd = tieconv.load_state_dict(FIXTURES / "llama-untied")
    result = tieconv.save(sd, tmp_path / "out", max_shard_size="3KB", metadata={"note": "x"})
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert len(result.files) > 1 and set(index["weight_map"]) == set(sd)
    for f in result.files:
        with safe_open(f, "pt") as handle:
            assert handle.metadata()["format"] == "pt" and handle.metadata()["note"] == "x"
    back = tieconv.load_state_dict(tmp_path / "out")
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_kept_name_is_the_embedding_not_the_head(tmp_path):
    w = torch.randn(8, 4)
    result = tieconv.save({"output.weight": w, "tok_embeddings.weight": w}, tmp_path / "out")
    assert result.dropped == {"output.weight": "tok_embeddings.weight"}
    assert result.bytes_saved == w.numel() * 4


def test_overlapping_views_get_their_own_bytes(tmp_path):
    base = torch.arange(12.0).reshape(4, 3)
    result = tieconv.save({"a": base[:2], "b": base[2:]}, tmp_path / "out")
    back = tieconv.load_state_dict(tmp_path / "out", embed="a", head="b")
    assert torch.equal(back["a"], base[:2]) and torch.equal(back["b"], base[2:]) and result.dropped == {}


def test_a_folder_holding_weights_is_refused_and_other_files_survive_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    backup = out / "model_backup.safetensors"
    save_file({"x": torch.ones(3)}, backup)
    sd = tieconv.load_state_dict(FIXTURES / "llama-tied")
    with pytest.raises(OutputError, match="model_backup.safetensors.*overwrite=True"):
        tieconv.save(sd, out)
    assert sorted(p.name for p in out.iterdir()) == ["model_backup.safetensors"]
    tieconv.save(sd, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "model_backup.safetensors"]
    assert torch.equal(load_file(backup)["x"], torch.ones(3))


def test_overwrite_replaces_only_the_old_checkpoints_own_files(tmp_path):
    out = tmp_path / "out"
    untied = tieconv.load_state_dict(FIXTURES / "llama-untied")
    old = tieconv.save(untied, out, max_shard_size="3KB")
    assert len(old.files) > 1
    (out / "notes.txt").write_text("mine")
    save_file({"x": torch.ones(3)}, out / "model-99999-of-99999.safetensors")  # not named by the old index
    with pytest.raises(OutputError, match="overwrite=True"):
        tieconv.save(untied, out)
    tied = tieconv.load_state_dict(FIXTURES / "llama-tied")
    new = tieconv.save(tied, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["model-99999-of-99999.safetensors", "model.safetensors",
                                                      "notes.txt"]
    back = tieconv.load_state_dict(out / "model.safetensors")
    assert all(torch.equal(back[k], tied[k]) for k in tied) and new.dropped
    assert (out / "notes.txt").read_text() == "mine"


def test_saving_onto_a_file_is_an_output_error(tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"not mine")
    with pytest.raises(OutputError, match="is a file"):
        tieconv.save({"a": torch.zeros(2)}, target)
    with pytest.raises(OutputError, match="cannot create"):
        tieconv.save({"a": torch.zeros(2)}, target / "inside")
    assert target.read_bytes() == b"not mine"
    with pytest.raises(OutputError, match="meta device"):
        tieconv.save({"a": torch.zeros(2, device="meta")}, tmp_path / "meta")


def test_sharded_save_records_dropped_names_in_the_shard_and_the_index(tmp_path):
    sd = tieconv.load_state_dict(FIXTURES / "llama-tied")
    result = tieconv.save(sd, tmp_path / "out", max_shard_size="3KB")
    assert len(result.files) > 1 and result.dropped == {"lm_head.weight": "model.embed_tokens.weight"}
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert index["metadata"]["lm_head.weight"] == "model.embed_tokens.weight"
    assert "lm_head.weight" not in index["weight_map"]
    holder = tmp_path / "out" / index["weight_map"]["model.embed_tokens.weight"]
    for f in result.files:
        with safe_open(f, "pt") as handle:
            recorded = handle.metadata().get("lm_head.weight")
        assert recorded == ("model.embed_tokens.weight" if f == str(holder) else None)
    unique = {t.untyped_storage().data_ptr(): t.nbytes for t in sd.values()}
    assert index["metadata"]["total_size"] == sum(unique.values())
    assert tieconv.inspect(tmp_path / "out").verdict == "tied"
    back = tieconv.load_state_dict(tmp_path / "out")
    assert back["lm_head.weight"] is back["model.embed_tokens.weight"]


def test_same_bytes_in_another_shape_are_not_dropped(tmp_path):
    base = torch.arange(12.0)
    result = tieconv.save({"a": base, "square": base.view(3, 4), "b": base}, tmp_path / "out")
    assert result.dropped == {"b": "a"}
    back = load_file(tmp_path / "out" / "model.safetensors")
    assert back["square"].shape == (3, 4) and torch.equal(back["square"].flatten(), base)


def test_a_saved_transformers_model_reloads_in_transformers(tmp_path):
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    for shard_size in ("5GB", "3KB"):
        out = tmp_path / shard_size
        tieconv.save(model, out, max_shard_size=shard_size)
        back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
        assert back.lm_head.weight is back.model.embed_tokens.weight
        ids = torch.tensor([[1, 5, 9]])
        with torch.no_grad():
            assert torch.equal(back(ids).logits, model(ids).logits)


def test_an_empty_folder_or_one_without_weights_needs_no_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "README.md").write_text("notes")
    tieconv.save({"a": torch.zeros(2)}, out)  # a state dict writes no config.json: nothing in the way
    assert (out / "config.json").read_text() == "{}" and (out / "README.md").read_text() == "notes"
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=16, n_positions=8, n_embd=8, n_layer=1,
                                                                 n_head=2))
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "config.json").write_text("{}")
    with pytest.raises(OutputError, match="config.json"):
        tieconv.save(model, fresh)  # would replace a config.json it did not write
    tieconv.save(model, fresh, overwrite=True)
    assert json.loads((fresh / "config.json").read_text())["model_type"] == "gpt2"
