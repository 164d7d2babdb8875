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
    # every file: the rewritten shard, the copied one, the index, the config (the writers no longer fsync
    # file by file; one pass over the finished folder does, after verification)
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
    src = FIXTURES / "llama-untied-sharded"
    result = tieconv.tie(src, tmp_path / "out", keep="embed")
    tmp_name = Path(renamed[0]).name
    names = sorted(os.listdir(tmp_path / "out"))
    assert len(names) >= 4 and any(f.unchanged_from for f in result.plan.files), names  # a shard copied as is
    for name in names:
        assert any(s.endswith(f"{tmp_name}/{name}") for s in synced), name
    assert any(s.endswith(tmp_name) for s in synced)  # the folder itself
    last_parent = max(i for i, s in enumerate(synced) if s == str(tmp_path))
    assert last_parent > max(i for i, s in enumerate(synced) if tmp_name in s)  # the parent after the rename
    assert json.loads((tmp_path / "out" / "config.json").read_text())["tie_word_embeddings"] is True


def test_a_write_out_failure_at_fsync_leaves_nothing(tmp_path, monkeypatch):
    # a disk that fails the write-out (EIO, or ENOSPC of delayed allocation) says so only at fsync
    import errno

    import tieconv.conversion.writer as writer

    real = os.fsync

    def failing(fd):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")) == "model.safetensors":  # an output file
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(fd)

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(tieconv.OutputError, match="could not store the output.*nothing was written"):
        tieconv.tie(FIXTURES / "llama-duplicated", tmp_path / "out")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no OUT, no temporary, no record, no lock
    assert writer.recover(tmp_path / "out") == []


def _write_behind_calls(monkeypatch, step: int) -> list[tuple[int, int, int]]:
    """Shrink the write-behind stretch to `step` bytes and record the real sync_file_range calls."""
    import tieconv.conversion.writer as writer

    calls: list[tuple[int, int, int]] = []
    real = writer._sync_file_range

    def spy(fd, offset, count, flags):
        calls.append((offset, count, flags))
        return real(fd, offset, count, flags)

    monkeypatch.setattr(writer, "COPY_STEP", step)
    monkeypatch.setattr(writer, "WRITE_BEHIND_BYTES", step)
    monkeypatch.setattr(writer, "_sync_file_range", spy)
    return calls


@pytest.mark.parametrize("kernel_copy", [True, False], ids=["copy_file_range", "pread-write"])
def test_copies_hand_each_stretch_to_the_disk_as_they_go(tmp_path, monkeypatch, kernel_copy):
    import errno

    import tieconv.conversion.writer as writer

    step = 1 << 16
    data = os.urandom(10 * step + 123)
    (tmp_path / "src").write_bytes(data)
    if not kernel_copy:  # a filesystem pair copy_file_range refuses: the user-space fallback
        def refused(*args):
            raise OSError(errno.EXDEV, "cross-device")
        monkeypatch.setattr(os, "copy_file_range", refused)
    calls = _write_behind_calls(monkeypatch, step)
    writer.copy_file(tmp_path / "src", tmp_path / "dst", len(data))
    assert (tmp_path / "dst").read_bytes() == data
    started = [(o, n) for o, n, flags in calls if flags == writer._SYNC_WRITE]
    waited = [(o, n) for o, n, flags in calls if flags != writer._SYNC_WRITE]
    # each stretch is started as soon as it is written, in order, without gaps ...
    assert started == [(i * step, step) for i in range(10)]
    # ... and the one before it waited for, so the copy runs at most two stretches ahead of the disk
    assert waited == started[:-1]
    assert all(f == writer._SYNC_WAIT_BEFORE | writer._SYNC_WRITE | writer._SYNC_WAIT_AFTER
               for _, _, f in calls if f != writer._SYNC_WRITE)


def test_streamed_safetensors_are_written_behind_too(tmp_path, monkeypatch):
    # tensors without a source range (from a torch file) stream through Python: their bytes are handed on too
    import tieconv.conversion.writer as writer

    calls = _write_behind_calls(monkeypatch, 1 << 12)
    value = torch.arange(64 * 32, dtype=torch.float32).reshape(64, 32)
    entry = writer.WriteEntry("w", "F32", (64, 32), value.nbytes, lambda: iter([value.numpy().tobytes()[i:i + 1000]
                                                                              for i in range(0, value.nbytes, 1000)]))
    writer.write_safetensors(tmp_path / "x.safetensors", [entry], None)
    with safe_open(tmp_path / "x.safetensors", "pt") as f:
        assert torch.equal(f.get_tensor("w"), value)
    started = [o for o, n, flags in calls if flags == writer._SYNC_WRITE]
    assert len(started) >= value.nbytes // (1 << 12) - 1 and started == sorted(started)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")
def test_sync_file_range_is_reached_through_libc(tmp_path):
    import tieconv.conversion.writer as writer

    with open(tmp_path / "f", "wb") as f:
        f.write(b"x" * 8192)
        f.flush()
        assert writer._sync_file_range(f.fileno(), 0, 8192, writer._SYNC_WRITE) is True
    r, w = os.pipe()
    try:
        assert writer._sync_file_range(r, 0, 1, writer._SYNC_WRITE) is False  # ESPIPE: nothing to write behind
    finally:
        os.close(r), os.close(w)


def test_a_hard_link_keeps_the_header_cache_only_for_an_unchanged_file(tmp_path, monkeypatch):
    """`tie --link`: a link changes the shard's ctime only; what was validated of it stays valid, for the
    output's verification and for the input's next inspect. A shard changed since it was read is parsed again."""
    from safetensors.torch import save_file

    from tieconv.conversion.writer import link_or_copy
    from tieconv.formats import safetensors_header

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    src = tmp_path / "in.safetensors"
    save_file({f"layer.{i}.weight": torch.full((2,), float(i)) for i in range(1000)}, src)  # a header over 32 kB
    first = read_header(src)
    parsed: list[str] = []
    real_parse = safetensors_header.parse_header
    monkeypatch.setattr(safetensors_header, "parse_header", lambda *a: parsed.append("x") or real_parse(*a))
    assert link_or_copy(src, tmp_path / "out.safetensors") == "linked"
    assert read_header(tmp_path / "out.safetensors").tensors == first.tensors
    assert read_header(src).tensors == first.tensors
    assert parsed == []
    # changed after it was read (same size, new bytes): the link carries nothing over; the header is parsed
    # again when its own bytes changed (a changed tensor value leaves the validated header valid: it is
    # read from the cache once the header bytes' digest matches)
    with open(src, "r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(b"\x00\x00\x80\x7f")
    os.utime(src, ns=(os.stat(src).st_atime_ns, os.stat(src).st_mtime_ns + 10**9))
    assert link_or_copy(src, tmp_path / "out2.safetensors") == "linked"
    assert read_header(tmp_path / "out2.safetensors").tensors == first.tensors and parsed == []
    with open(src, "r+b") as f:
        at = f.read(200_000).index(b'"layer.0.weight"') + 7
        f.seek(at)
        f.write(b"X")  # "layer.X.weight": the header's bytes changed, its length did not
    os.utime(src, ns=(os.stat(src).st_atime_ns, os.stat(src).st_mtime_ns + 10**9))
    assert link_or_copy(src, tmp_path / "out3.safetensors") == "linked"
    assert "layer.X.weight" in read_header(tmp_path / "out3.safetensors").tensors
    assert parsed == ["x"]


@pytest.mark.parametrize("sig, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_while_the_output_is_flushed_leaves_nothing(tmp_path, sig, code):
    """Ctrl-C or SIGTERM during the fsync pass (before the swap): OUT untouched, the temporary removed."""
    script = r"""
import os, signal, sys
import tieconv.conversion.writer as writer
real, SIG = writer.fsync_tree, getattr(signal, sys.argv[3])
def interrupted(root):
    os.kill(os.getpid(), SIG)
    return real(root)
writer.fsync_tree = interrupted
from tieconv.cli import main
sys.argv = ["tieconv", "untie", sys.argv[1], sys.argv[2]]
main()
"""
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-c", script, str(FIXTURES / "llama-tied"), str(out), sig],
                            capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == code, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_failed_rename_during_the_swap_is_an_output_error(tmp_path, monkeypatch):
    from tieconv.conversion import writer
    from tieconv.errors import OutputError

    def failing(self):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(writer.OutputFolder, "_swap_into_place", failing)
    with pytest.raises(OutputError, match="could not be put in place .Input/output error"):
        tieconv.tie(FIXTURES / "llama-duplicated", tmp_path / "out")
    assert not (tmp_path / "out").exists()
