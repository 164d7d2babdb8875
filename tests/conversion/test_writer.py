"""The writer: aligned safetensors, and an `--overwrite` that can never lose OUT, whenever it is killed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import tieconv
from tieconv.formats.safetensors_header import read_header

from ..conftest import FIXTURES, ROOT

# Runs the CLI with every rename, replace, unlink, rmdir, rmtree and renameat2 of the process counted;
# the KILL_AT-th one kills the process (SIGKILL-like: os._exit, no cleanup) before it happens.
KILLER = r"""
import os, shutil, sys
import tieconv.conversion.writer as writer

kill_at = int(os.environ["KILL_AT"])
calls = [0]

def counted(name, func):
    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == kill_at:
            os._exit(137)
        return func(*args, **kwargs)
    return wrapper

for mod, name in ((os, "rename"), (os, "replace"), (os, "unlink"), (os, "rmdir"), (shutil, "rmtree"),
                  (writer, "_renameat2")):
    setattr(mod, name, counted(f"{mod.__name__}.{name}", getattr(mod, name)))
if os.environ.get("NO_EXCHANGE"):
    writer.exchange = lambda a, b: False  # the fallback path of platforms without an atomic exchange
from tieconv.cli import main
sys.argv = ["tieconv", *sys.argv[1:]]
try:
    main()
finally:
    sys.stderr.write(f"\nCALLS={calls[0]}\n")
"""


def _run_killed(args, kill_at: int, no_exchange: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "KILL_AT": str(kill_at), "PYTHONPATH": str(ROOT)}
    if no_exchange:
        env["NO_EXCHANGE"] = "1"
    return subprocess.run([sys.executable, "-c", KILLER, *map(str, args), "-q"], env=env, capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def _state(out: Path) -> str:
    """'old', 'new' or 'absent': which complete checkpoint OUT holds (anything else fails the test)."""
    if not os.path.lexists(out):
        return "absent"
    verdict = tieconv.inspect(out).verdict
    assert verdict in ("tieable", "tied"), verdict
    names = sorted(os.listdir(out))
    if verdict == "tieable":  # the old OUT: untie of llama-tied, which has a generation config
        assert names == ["config.json", "generation_config.json", "model.safetensors"], names
        return "old"
    assert names == ["config.json", "model.safetensors"], names  # the new one: tie of llama-duplicated
    return "new"


@pytest.mark.parametrize("no_exchange", [False, True], ids=["exchange", "move-aside"])
def test_overwrite_killed_at_every_filesystem_step_never_loses_out(tmp_path, no_exchange):
    out = tmp_path / "out"
    src = FIXTURES / "llama-tied"
    states = []
    kill_at = 1
    while True:
        shutil.rmtree(out, ignore_errors=True)
        tieconv.untie(src, out)  # the old OUT: complete, distinguishable (tieable) from the new one (tied)
        result = _run_killed(["tie", FIXTURES / "llama-duplicated", out, "--overwrite"], kill_at, no_exchange)
        finished = result.returncode == 0
        if not finished:
            assert result.returncode == 137, result.stderr
        state = _state(out)
        if state == "absent":
            # only the move-aside fallback may leave OUT absent, and then the next run must restore it
            assert no_exchange, f"OUT absent after a kill at step {kill_at}"
            again = _run_killed(["tie", FIXTURES / "llama-duplicated", out], 10**9)
            assert again.returncode in (0, 2), again.stderr
            state = "restored+" + _state(out)
            assert state in ("restored+new", "restored+old")
        states.append(state)
        # a later run cleans up after the dead one and never touches a complete OUT
        again = _run_killed(["tie", FIXTURES / "llama-duplicated", out, "--overwrite"], 10**9)
        assert again.returncode == 0, again.stderr
        assert _state(out) == "new"
        leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith("out.tieconv-")
                     and not p.name.endswith("-lock")]
        assert leftovers == []
        if finished:
            break
        kill_at += 1
    assert kill_at > 5  # the run has several filesystem steps, each was a kill point
    assert states[-1] == "new" and "old" in states
    print(f"kill points: {kill_at - 1}; outcomes: {states}")


def test_interrupt_during_the_swap_ends_as_success(tmp_path):
    out = tmp_path / "out"
    tieconv.untie(FIXTURES / "llama-tied", out)
    code = r"""
import os, signal, sys
import tieconv.conversion.writer as writer
real = writer.exchange
def interrupted(a, b):
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C arrives in the middle of the swap
    return real(a, b)
writer.exchange = interrupted
from tieconv.cli import main
sys.argv = ["tieconv", "tie", sys.argv[1], sys.argv[2], "--overwrite"]
main()
"""
    result = subprocess.run([sys.executable, "-c", code, str(FIXTURES / "llama-duplicated"), str(out)],
                            capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert "interrupted after the output was complete" in result.stdout
    assert tieconv.inspect(out).verdict == "tied"
    assert [p.name for p in tmp_path.iterdir() if "tieconv-" in p.name and not p.name.endswith("lock")] == []


def test_written_safetensors_align_every_tensor_to_its_dtype(tmp_path):
    # an odd-sized U8 tensor stored before F32 ones in a torch file
    sd = {"mask": torch.ones(3, dtype=torch.uint8), "tok_embeddings.weight": torch.randn(8, 4),
          "output.weight": torch.randn(8, 4), "norm.weight": torch.ones(4, dtype=torch.float16)}
    torch.save(sd, tmp_path / "m.pt")
    tieconv.tie(tmp_path / "m.pt", tmp_path / "out.safetensors", keep="embed")
    header = read_header(tmp_path / "out.safetensors")
    size = {"F32": 4, "F16": 2, "U8": 1}
    for key, entry in header.tensors.items():
        assert (header.data_start + entry.begin) % size[entry.dtype] == 0, key
    with safe_open(tmp_path / "out.safetensors", "pt") as f:
        assert torch.equal(f.get_tensor("mask"), sd["mask"])
        assert torch.equal(f.get_tensor("tok_embeddings.weight"), sd["tok_embeddings.weight"])


def test_output_is_fsynced_before_it_is_renamed(tmp_path, monkeypatch):
    import tieconv.conversion.writer as writer

    synced: list[str] = []
    real = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    renamed: list[str] = []
    real_exchange = writer._renameat2

    def spy_rename(a, b, flags):
        renamed.append(str(a))
        return real_exchange(a, b, flags)

    monkeypatch.setattr(writer, "_renameat2", spy_rename)
    src = FIXTURES / "llama-duplicated"
    tieconv.tie(src, tmp_path / "out")
    tmp_name = Path(renamed[0]).name
    for name in ("model.safetensors", "config.json"):
        assert any(s.endswith(f"{tmp_name}/{name}") for s in synced), name
    assert any(s.endswith(tmp_name) for s in synced)  # the folder itself
    assert str(tmp_path) in synced  # and the parent after the rename
    assert json.loads((tmp_path / "out" / "config.json").read_text())["tie_word_embeddings"] is True
