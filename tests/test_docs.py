"""The README's pipeline example and every public docstring example run as written."""

from __future__ import annotations

import contextlib
import doctest
import importlib
import io
import os
import re

import pytest

from .conftest import ROOT

MODULES = ["tieconv.inspection.inspector", "tieconv.conversion.planning", "tieconv.conversion.convert", "tieconv.torchapi.hooks", "tieconv.torchapi.loading", "tieconv.torchapi.saving",
           "tieconv.torchapi.memory", "tieconv.formats.safetensors_header", "tieconv.formats.checkpoint", "tieconv.inspection.scanning",
           "tieconv.torchapi.storage", "tieconv.inspection.equivalence"]


@pytest.fixture
def in_root(monkeypatch):
    monkeypatch.chdir(ROOT)


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples(module, in_root):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0  # every listed module has examples that really run


def test_readme_pipeline_example(in_root):
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- pipeline-example -->\s*```python\n(.*?)```", text, re.S).group(1)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, "README.md", "exec"), {"__name__": "readme"})
    lines = out.getvalue().splitlines()
    assert lines[0] == "{'lm_head.weight': 'model.embed_tokens.weight'} 2048"
    assert lines[1] == "tied"
    assert "sharing saves" in out.getvalue()


def test_public_api_is_exported():
    import tieconv

    for name in tieconv.__all__:
        assert getattr(tieconv, name) is not None
    assert (ROOT / "tieconv" / "py.typed").is_file()
    assert os.environ.get("XDG_CACHE_HOME")  # tests never touch the user's cache
