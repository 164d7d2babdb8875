"""The package's shape: the public API from `tieconv`, lazily, and no module that could shadow it."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import tieconv

PUBLIC_FUNCTIONS = [n for n in tieconv.__all__ if n[0].islower() and not n.startswith("_")]


def test_every_public_name_resolves():
    for name in tieconv.__all__:
        assert getattr(tieconv, name) is not None, name


def test_no_module_is_named_like_a_public_function():
    # `tieconv/inspect/` (or a module `inspect.py` in any subpackage re-exported upwards) would shadow
    # `tieconv.inspect()` once imported; walk the whole package, not a hand-written list.
    modules = [m.name for m in pkgutil.walk_packages(tieconv.__path__, "tieconv.")]
    assert len(modules) > 20
    clashes = [m for m in modules if m.rsplit(".", 1)[1] in PUBLIC_FUNCTIONS]
    assert clashes == []


def test_public_functions_survive_importing_every_module():
    import importlib

    for m in pkgutil.walk_packages(tieconv.__path__, "tieconv."):
        importlib.import_module(m.name)
    for name in PUBLIC_FUNCTIONS:
        assert callable(getattr(tieconv, name)), name


def test_importing_tieconv_imports_neither_torch_nor_transformers():
    code = "import sys, tieconv, tieconv.cli; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
