"""The package type-checks with mypy --strict (settings pinned in pyproject.toml's [tool.mypy])."""

from __future__ import annotations

import subprocess
import sys

from .conftest import ROOT


def test_the_package_is_typed_strictly(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy-cache")],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]
    assert "Success: no issues found" in result.stdout
