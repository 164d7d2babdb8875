from __future__ import annotations

import warnings

import pytest
import torch

import tieconv
from tieconv.errors import RefusedError
from tieconv.inspection.verdicts import TABLE, Load

from ..conftest import FIXTURES
from ..helpers import VERDICT_FIXTURES, stored_tensors, write_embed_missing_untied


def test_tied_follows_the_checkpoint_without_extra_memory():
    sd = tieconv.load_state_dict(FIXTURES / "llama-tied")
    assert sd["lm_head.weight"] is sd["model.embed_tokens.weight"]
    sd = tieconv.load_state_dict(FIXTURES / "llama-duplicated")
    assert sd["lm_head.weight"] is sd["model.embed_tokens.weight"]


def test_untied_and_tieable_as_stored():
    for name in ("llama-untied", "llama-tieable"):
        sd = tieconv.load_state_dict(FIXTURES / name)
        assert sd["lm_head.weight"] is not sd["model.embed_tokens.weight"]


def test_conflict_warns_and_head_missing_raises():
    with pytest.warns(UserWarning, match="runtimes disagree"):
        sd = tieconv.load_state_dict(FIXTURES / "llama-conflict")
    assert not torch.equal(sd["lm_head.weight"], sd["model.embed_tokens.weight"])
    with pytest.raises(RefusedError, match="tie=True"):
        tieconv.load_state_dict(FIXTURES / "llama-head-missing")
    sd = tieconv.load_state_dict(FIXTURES / "llama-head-missing", tie=True)
    assert sd["lm_head.weight"] is sd["model.embed_tokens.weight"]


def test_tie_true_on_different_matrices_needs_keep():
    with pytest.raises(RefusedError, match="keep="):
        tieconv.load_state_dict(FIXTURES / "llama-untied", tie=True)
    raw = tieconv.load_state_dict(FIXTURES / "llama-untied")
    sd = tieconv.load_state_dict(FIXTURES / "llama-untied", tie=True, keep="head")
    assert sd["model.embed_tokens.weight"] is sd["lm_head.weight"]
    assert torch.equal(sd["model.embed_tokens.weight"], raw["lm_head.weight"])


def test_tie_false_gives_the_head_its_own_copy():
    sd = tieconv.load_state_dict(FIXTURES / "llama-tied", tie=False)
    assert torch.equal(sd["lm_head.weight"], sd["model.embed_tokens.weight"])
    assert sd["lm_head.weight"].data_ptr() != sd["model.embed_tokens.weight"].data_ptr()
    sd = tieconv.load_state_dict(FIXTURES / "gpt2-bin", tie=False)  # one storage in the .bin
    assert sd["lm_head.weight"].untyped_storage().data_ptr() != sd["transformer.wte.weight"].untyped_storage().data_ptr()


def test_bart_every_target_shares_the_source():
    sd = tieconv.load_state_dict(FIXTURES / "bart-tied")
    for key in ("lm_head.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight"):
        assert sd[key] is sd["model.shared.weight"]


def test_nanogpt_strip_prefix():
    sd = tieconv.load_state_dict(FIXTURES / "nanogpt" / "ckpt.pt", strip_prefix="_orig_mod.")
    assert set(sd) == {"transformer.wte.weight", "transformer.wpe.weight", "lm_head.weight"}
    assert sd["lm_head.weight"] is sd["transformer.wte.weight"]


@pytest.mark.parametrize("name", ["meta-llama", "torchtune", "gpt2-bin-sharded", "llama-untied-sharded",
                                  "single-files/llama-save-model.safetensors"])
def test_every_layout_loads(name):
    sd = tieconv.load_state_dict(FIXTURES / name)
    report = tieconv.inspect(FIXTURES / name)
    assert report.embed.key in sd


def test_device_moves_each_shared_tensor_once(monkeypatch):
    stored = tieconv.load_state_dict(FIXTURES / "bart-tied")
    shared = stored["model.shared.weight"]
    moved_from = []
    to = torch.Tensor.to

    def counting_to(self, *args, **kwargs):
        if "meta" in map(str, (*args, *kwargs.values())):
            moved_from.append(self.data_ptr())
        return to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", counting_to)
    sd = tieconv.load_state_dict(FIXTURES / "bart-tied", device="meta")
    monkeypatch.undo()
    names = ("lm_head.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight")
    assert all(sd[k] is sd["model.shared.weight"] for k in names)
    assert sd["model.shared.weight"].device.type == "meta" and sd["model.shared.weight"].shape == shared.shape
    assert len(moved_from) == len(set(moved_from)) == len(stored) - 3  # once per storage
    assert set(sd) == set(stored)


@pytest.mark.parametrize("verdict", [v for v in VERDICT_FIXTURES if v != "undecided"] + ["embed-missing/unties"])
def test_a_default_load_does_what_the_verdict_table_says(tmp_path, verdict):
    src = write_embed_missing_untied(tmp_path / "in") if verdict == "embed-missing/unties" else \
        FIXTURES / VERDICT_FIXTURES[verdict]
    report = tieconv.inspect(src)
    assert report.verdict == verdict.split("/")[0]
    row = TABLE[report.verdict]
    stored = stored_tensors(src)
    if row.load is Load.REFUSE:
        with pytest.raises(RefusedError, match="tie=True"):
            tieconv.load_state_dict(src)
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sd = tieconv.load_state_dict(src)
    assert bool(caught) == (row.load is Load.WARN)
    for key, tensor in stored.items():  # every stored tensor holds its stored values
        assert torch.equal(sd[key], tensor), key
    if report.embed is None or report.head is None:
        assert set(sd) == set(stored)
        return
    e, h = report.embed.key, report.head.key
    flag_ties = report.tie_flag.value is not False
    if row.load is Load.SHARE or (row.load is Load.EMBED_FROM_HEAD and flag_ties):
        assert sd[e] is sd[h]
    elif row.load is Load.EMBED_FROM_HEAD:
        assert e not in sd  # the flag unties: the embedding is lost, not invented
    else:
        assert set(sd) == set(stored) and (h not in sd or sd[h] is not sd[e])
