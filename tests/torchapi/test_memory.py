from __future__ import annotations

import torch

import tieconv

from ..conftest import FIXTURES
from ..torchapi.test_hooks import Transformer


def test_memory_report_of_a_tied_checkpoint():
    sd = tieconv.load_state_dict(FIXTURES / "llama-tied")
    report = tieconv.memory_report(sd)
    assert report.bytes_saved_by_sharing == 64 * 16 * 2
    assert report.parameters - report.unique_parameters == 64 * 16
    assert "lm_head.weight shares model.embed_tokens.weight" in str(report)
    assert report.to_dict()["bytes_saved_by_sharing"] == 2048


def test_disjoint_halves_of_one_storage_save_nothing():
    base = torch.zeros(12)  # 48 bytes, one storage
    report = tieconv.memory_report({"low": base[:6], "high": base[6:]})
    assert report.bytes == report.unique_bytes == 48
    assert report.bytes_saved_by_sharing == 0 and report.unique_parameters == 12
    assert [e.shares_with for e in report.entries] == [None, None]


def test_overlapping_views_count_the_bytes_they_cover():
    base = torch.zeros(12)
    report = tieconv.memory_report({"a": base[:8], "b": base[4:], "same": base[:8], "alone": torch.zeros(2)})
    assert report.bytes == (8 + 8 + 8 + 2) * 4
    assert report.unique_bytes == (12 + 2) * 4 and report.unique_parameters == 14
    assert [e.shares_with for e in report.entries] == [None, "a", "a", None]
    interleaved = tieconv.memory_report({"even": base[::2], "odd": base[1::2]})
    assert interleaved.bytes_saved_by_sharing == 0


def test_modules_and_meta_state_dicts():
    tied = Transformer(tied=True)
    head_bytes = tied.output.weight.numel() * 4
    assert tieconv.memory_report(tied).bytes_saved_by_sharing == head_bytes
    assert tieconv.memory_report(Transformer()).bytes_saved_by_sharing == 0
    with torch.device("meta"):
        tied_meta, untied_meta = Transformer(tied=True), Transformer()
    # state_dict() detaches: different tensor objects over one meta storage, all with data_ptr 0
    assert tieconv.memory_report(tied_meta.state_dict()).bytes_saved_by_sharing == head_bytes
    assert tieconv.memory_report(untied_meta.state_dict()).bytes_saved_by_sharing == 0
