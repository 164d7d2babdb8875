from __future__ import annotations

import gc

import pytest

import tieconv
import tieconv.conversion.convert as convert
from tieconv.errors import RefusedError

from .conftest import FIXTURES


@pytest.mark.parametrize("enabled", [True, False])
def test_a_conversion_runs_with_the_collector_paused_and_leaves_it_as_it_was(tmp_path, monkeypatch, enabled):
    seen = []
    real_execute = convert.execute
    monkeypatch.setattr(convert, "execute", lambda *a, **k: seen.append(gc.isenabled()) or real_execute(*a, **k))
    was = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        tieconv.tie(FIXTURES / "llama-duplicated", tmp_path / "tied")
        assert seen == [False] and gc.isenabled() is enabled
        with pytest.raises(RefusedError):  # refused: the collector is back too
            tieconv.tie(FIXTURES / "llama-untied", tmp_path / "refused")
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()


def test_diff_runs_with_the_collector_paused(monkeypatch):
    import tieconv.inspection.equivalence as equivalence

    seen = []
    real = equivalence.compare_reports
    monkeypatch.setattr(equivalence, "compare_reports", lambda *a, **k: seen.append(gc.isenabled()) or real(*a, **k))
    assert tieconv.diff(FIXTURES / "llama-tied", FIXTURES / "llama-tied-sharded").equivalent
    assert seen == [False] and gc.isenabled()
