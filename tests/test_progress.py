"""Progress bars and colours: on a terminal only, never with --quiet or NO_COLOR, never on stdout."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import threading

from .conftest import FIXTURES, ROOT


def run(args, *, stderr_tty=False, stdout_tty=False, env_extra=None):
    """Run the CLI with stdout and/or stderr on a real pseudo-terminal (80x24), read as it is written."""
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    env.update(env_extra or {})
    kwargs, readers, outputs = {}, [], {}
    for name, want in (("stdout", stdout_tty), ("stderr", stderr_tty)):
        if not want:
            kwargs[name] = subprocess.PIPE
            continue
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        kwargs[name] = slave
        chunks = []
        outputs[name] = chunks

        def read(master=master, chunks=chunks):
            while True:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    break
                if not data:
                    break
                chunks.append(data)

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        readers.append((thread, master, slave))
    proc = subprocess.Popen([sys.executable, "-m", "tieconv.cli", *map(str, args)], env=env, cwd=ROOT, **kwargs)
    for _, _, slave in readers:
        os.close(slave)
    piped = proc.communicate(timeout=120)
    for thread, master, _ in readers:
        thread.join(10)
        os.close(master)
    result = {}
    for i, name in enumerate(("stdout", "stderr")):
        result[name] = b"".join(outputs[name]).decode(errors="replace") if name in outputs else piped[i].decode()
    return proc.returncode, result


def test_progress_on_a_terminal_only():
    code, out = run(["scan", FIXTURES], stderr_tty=True)
    assert code == 0 and "scanning" in out["stderr"]
    assert "scanning" not in out["stdout"]
    code, out = run(["scan", FIXTURES, "--quiet"], stderr_tty=True)
    assert "scanning" not in out["stderr"]
    code, out = run(["scan", FIXTURES])  # stderr is a pipe
    assert out["stderr"] == ""


def test_json_is_never_mixed_with_progress(tmp_path):
    import json

    code, out = run(["tie", FIXTURES / "llama-duplicated", tmp_path / "out", "--json"], stderr_tty=True)
    assert code == 0
    assert json.loads(out["stdout"])["verdict"] == "tied"


def test_colours_on_a_terminal_and_never_with_no_color():
    code, out = run(["inspect", FIXTURES / "llama-conflict"], stdout_tty=True)
    assert "\x1b[31mconflict\x1b[0m" in out["stdout"]
    code, out = run(["inspect", FIXTURES / "llama-conflict"], stdout_tty=True, env_extra={"NO_COLOR": "1"})
    assert "\x1b[" not in out["stdout"] and "conflict" in out["stdout"]
    code, out = run(["inspect", FIXTURES / "llama-conflict"])
    assert "\x1b[" not in out["stdout"]
    code, out = run(["inspect", FIXTURES / "llama-conflict"], stdout_tty=True, env_extra={"NO_COLOR": ""})
    assert "\x1b[31mconflict\x1b[0m" in out["stdout"]  # no-color.org: an empty NO_COLOR does not disable colour


def test_sigterm_exits_143_and_leaves_nothing(tmp_path):
    import signal

    code = ("import sys, time, tieconv.conversion.convert as c\n"
            "real = c.execute\n"
            "def slow(*a, **k):\n"
            "    print('started', flush=True); time.sleep(30)\n"
            "c.execute = slow\n"
            "from tieconv.cli import main\n"
            "sys.argv = ['tieconv', 'tie', sys.argv[1], sys.argv[2]]\n"
            "main()\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(FIXTURES / "llama-duplicated"), str(tmp_path / "out")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "started"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 143
    assert "interrupted" in proc.stderr.read() and not (tmp_path / "out").exists()
