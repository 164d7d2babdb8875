from __future__ import annotations

import json

import torch
from safetensors import safe_open

import tieconv
from tieconv.safetensors_header import read_header

from .conftest import FIXTURES


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
    base = torch.arange(12.0)
    result = tieconv.save({"a": base[:6], "b": base[6:]}, tmp_path / "out")
    back = tieconv.load_state_dict(tmp_path / "out", embed="a", head="b")
    assert torch.equal(back["a"], base[:6]) and torch.equal(back["b"], base[6:]) and result.dropped == {}


def test_memory_report(tmp_path):
    sd = tieconv.load_state_dict(FIXTURES / "llama-tied")
    report = tieconv.memory_report(sd)
    assert report.bytes_saved_by_sharing == 64 * 16 * 2
    assert report.parameters - report.unique_parameters == 64 * 16
    assert "lm_head.weight shares model.embed_tokens.weight" in str(report)
    assert report.to_dict()["bytes_saved_by_sharing"] == 2048
