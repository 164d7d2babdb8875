"""Hub repo ids against a local Hub: olah serving local git repos, behind nginx honouring HTTP ranges."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from ..conftest import FIXTURES, ROOT
from ..hub_server import ServerMissing, local_hub, make_git_repo, write_llama_repo

SMALL_LLAMA = {"vocab": 16384, "hidden": 256, "layers": 4, "intermediate": 1024, "heads": 4, "kv_heads": 2,
               "shard_bytes": 6_000_000}
UNREACHABLE = "http://127.0.0.1:9"  # nothing listens on the discard port: connections are refused at once


def _dtype_repo(dst: Path) -> Path:
    """llama-duplicated with the head stored as F32: equal to the BF16 embedding after the cast."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(FIXTURES / "llama-duplicated", dst)
    tensors = load_file(dst / "model.safetensors")
    tensors["lm_head.weight"] = tensors["lm_head.weight"].float()
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def _mistral_style_repo(dst: Path) -> Path:
    """A sharded repo that also carries Mistral's own format (consolidated.safetensors) and a subfolder's weights."""
    shutil.copytree(FIXTURES / "llama-untied-sharded", dst)
    shutil.copy(FIXTURES / "llama-untied" / "model.safetensors", dst / "consolidated.safetensors")
    (dst / "original").mkdir()
    shutil.copy(FIXTURES / "llama-untied" / "model.safetensors", dst / "original" / "model.safetensors")
    (dst / "tokenizer.json").write_text('{"version": "1.0"}\n')
    return dst


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    base = tmp_path_factory.mktemp("hub")
    src = base / "src"
    repos = {f"org/{name}": make_git_repo(src / name, FIXTURES / fixture) for name, fixture in (
        ("tiny-dup", "llama-duplicated"), ("tiny-tied", "llama-tied"), ("tiny-sharded", "llama-untied-sharded"),
        ("gpt2-bin", "gpt2-bin"), ("bert", "bert-encoder"))}
    repos["org/mistral-style"] = make_git_repo(_mistral_style_repo(src / "mistral-style"))
    repos["org/dtypes"] = make_git_repo(_dtype_repo(src / "dtypes"))
    for variant in ("tied", "duplicated"):
        folder = src / f"llama-{variant}"
        write_llama_repo(folder, variant=variant, **SMALL_LLAMA)
        repos[f"org/llama-{variant}"] = make_git_repo(folder)
    try:
        with local_hub(base / "server", repos) as endpoint:
            yield endpoint
    except ServerMissing as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the range-honouring test server cannot run: {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def architectures():
    """The session's tieconv cache, holding what transformers says about these repos' architectures."""
    import tieconv

    for fixture in ("llama-tied", "llama-duplicated", "llama-untied-sharded", "bert-encoder", "gpt2-bin"):
        tieconv.inspect(FIXTURES / fixture, compare=False)
    return Path(os.environ["XDG_CACHE_HOME"]) / "tieconv"


@pytest.fixture
def xdg(tmp_path, architectures):
    """A tieconv cache folder of this test's own (no remembered headers), with the session's architectures."""
    folder = tmp_path / "xdg"
    (folder / "tieconv").mkdir(parents=True)
    for f in architectures.glob("architectures-*.json"):
        shutil.copy(f, folder / "tieconv" / f.name)
    return folder


def tieconv(args, *, endpoint, home, xdg, offline=False, check=False, timeout=300):
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HOME": str(home), "HF_HUB_DISABLE_TELEMETRY": "1",
           "XDG_CACHE_HOME": str(xdg)}
    for name in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "CI_HUB_NOTHING"):
        env.pop(name, None)
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "tieconv.cli", *map(str, args)], env=env, capture_output=True,
                            text=True, cwd=ROOT, timeout=timeout, check=False)
    result.seconds = time.monotonic() - start
    if check:
        assert result.returncode == 0, result.stderr
    return result


def cached_files(home: Path, repo: str) -> list[str]:
    """Files of `repo`'s snapshots in the HF cache, relative to the snapshot."""
    snapshots = home / "hub" / ("models--" + repo.replace("/", "--")) / "snapshots"
    return sorted(str(p.relative_to(s)) for s in snapshots.iterdir() for p in s.rglob("*") if not p.is_dir()) \
        if snapshots.is_dir() else []


def use_endpoint(monkeypatch, endpoint: str, tmp_path: Path | None = None) -> None:
    """Point this process's huggingface_hub at `endpoint` (its constants are read at import) and isolate caches."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    if tmp_path is not None:
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


class StallingServer:
    """Accepts connections, answers a 206's headers, then sends nothing: a stalled body."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.endpoint = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            conn.sendall(b"HTTP/1.1 206 Partial Content\r\nContent-Length: 100\r\nContent-Range: bytes 0-99/1000\r\n\r\n")

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


# ---------------------------------------------------------------- 1. local or remote, decided fast


def test_a_mistyped_local_folder_fails_fast_naming_both_readings(tmp_path, xdg):
    result = tieconv(["inspect", "fixtures/llama-duplcated"], endpoint=UNREACHABLE, home=tmp_path / "hf", xdg=xdg)
    assert result.returncode == 2 and result.seconds < 10, (result.seconds, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no local path fixtures/llama-duplcated" in lines[0]
    assert "fixtures/llama-duplcated@main" in lines[0] and "Retry" not in result.stderr
    # a path written as a path is never looked up on the Hub
    dotted = tieconv(["inspect", "./fixtures/llama-duplcated"], endpoint=UNREACHABLE, home=tmp_path / "hf", xdg=xdg)
    assert dotted.returncode == 2 and "no such file or folder" in dotted.stderr and "Hub" not in dotted.stderr


def test_repo_id_readings():
    from tieconv.errors import InputError
    from tieconv.formats.hub import repo_ref

    assert repo_ref("org/name@v1.0").revision == "v1.0" and repo_ref("org/name").revision is None
    assert repo_ref("gpt2").repo == "gpt2" and repo_ref("hf://org/name").could_be_local is False
    assert repo_ref("fixtures/llama-duplcated").could_be_local is True
    assert repo_ref("nowhere-folder/model").could_be_local is False
    for local in ("fixtures/llama-tied", "./org/name", "/abs/path", "~/models/x", "a/b/c", "typo.safetensors"):
        assert repo_ref(local) is None, local
    assert repo_ref(Path("org/name")) is None  # Path objects are paths
    with pytest.raises(InputError, match="not a valid Hub repo id"):
        repo_ref("hf://org/na..me")


def test_a_missing_repo_or_revision_answers_at_once(hub, tmp_path, xdg):
    for args, words in ((["inspect", "org/nope"], ["org/nope@main"]),
                        (["inspect", "org/tiny-dup@nope"], ["org/tiny-dup", "nope"]),
                        (["tie", "org/nope", tmp_path / "out"], ["org/nope@main"])):
        result = tieconv(args, endpoint=hub, home=tmp_path / "hf", xdg=xdg)
        assert result.returncode == 2 and result.seconds < 10, (result.seconds, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and all(w in result.stderr for w in words), result.stderr


def test_a_stalled_body_ends_in_a_read_timeout(monkeypatch):
    from huggingface_hub import constants

    from tieconv.errors import InputError
    from tieconv.formats.hub import RemoteFiles

    server = StallingServer()
    use_endpoint(monkeypatch, server.endpoint)
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 1)
    try:
        start = time.monotonic()
        with pytest.raises(InputError, match="stopped answering"):
            RemoteFiles("org/x", "a" * 40).read("model.safetensors", 0, 100)
        assert time.monotonic() - start < 5
    finally:
        server.close()


# ---------------------------------------------------------------- 2-3. the cache first; headers remembered


def test_a_cached_repo_is_read_without_waiting_for_the_network(hub, tmp_path, xdg):
    home = tmp_path / "hf"
    tieconv(["tie", "org/tiny-dup", tmp_path / "out"], endpoint=hub, home=home, xdg=xdg, check=True)
    server = StallingServer()  # a Hub that accepts connections and never answers
    try:
        result = tieconv(["inspect", "org/tiny-dup", "--json"], endpoint=server.endpoint, home=home, xdg=xdg,
                         check=True, timeout=60)
    finally:
        server.close()
    doc = json.loads(result.stdout)
    assert doc["verdict"] == "duplicated" and doc["downloaded_bytes"] == 0
    assert server.conns == []  # the network was not even asked
    assert any("local Hugging Face cache" in n and "may be behind" in n for n in doc["notes"]), doc["notes"]
    # offline: the revision asked for is named when it is not cached
    offline = tieconv(["inspect", "org/tiny-dup@nope"], endpoint=UNREACHABLE, home=home, xdg=xdg, offline=True)
    assert offline.returncode == 2 and "org/tiny-dup@nope" in offline.stderr, offline.stderr


def test_offline_inspect_uses_the_headers_read_online(hub, tmp_path, xdg):
    home = tmp_path / "hf"
    online = json.loads(tieconv(["inspect", "org/tiny-sharded", "--json"], endpoint=hub, home=home, xdg=xdg,
                                check=True).stdout)
    assert online["verdict"] == "untied" and online["downloaded_bytes"] > 0
    assert not list(home.rglob("*.safetensors"))  # no weight file in the HF cache
    offline = tieconv(["inspect", "org/tiny-sharded", "--json"], endpoint=UNREACHABLE, home=home, xdg=xdg,
                      offline=True, check=True)
    doc = json.loads(offline.stdout)
    assert doc["verdict"] == "untied" and doc["downloaded_bytes"] == 0
    assert any("tieconv's cache" in n and "may be behind" in n for n in doc["notes"]), doc["notes"]
    # online again: the commit is asked, the headers are not downloaded again
    again = json.loads(tieconv(["inspect", "org/tiny-sharded", "--json"], endpoint=hub, home=home, xdg=xdg,
                               check=True).stdout)
    assert again["verdict"] == "untied" and again["downloaded_bytes"] == 0


def test_a_partial_snapshot_says_what_is_missing(hub, tmp_path, xdg):
    home = tmp_path / "hf"
    env = {**os.environ, "HF_ENDPOINT": hub, "HF_HOME": str(home)}
    code = ("from huggingface_hub import hf_hub_download as d; d('org/tiny-sharded', 'config.json'); "
            "d('org/tiny-sharded', 'model.safetensors.index.json')")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
    result = tieconv(["inspect", "org/tiny-sharded"], endpoint=UNREACHABLE, home=home, xdg=xdg, offline=True)
    assert result.returncode == 2 and "only part" in result.stderr and "model-00001-of-00003" in result.stderr
    assert "re-download the checkpoint" not in result.stderr and "org/tiny-sharded@main" in result.stderr


def test_the_header_cache_is_bounded_and_least_recently_used_goes_first(hub, tmp_path, monkeypatch):
    import tieconv
    from tieconv.formats import hub as hubmod

    use_endpoint(monkeypatch, hub, tmp_path)
    tieconv.inspect("org/tiny-tied", compare=False)
    (entry,) = list(hubmod._header_cache_dir().iterdir())
    monkeypatch.setattr(hubmod, "HEADER_CACHE_MAX_BYTES", int(entry.stat().st_size * 2.5))
    tieconv.inspect("org/tiny-dup", compare=False)
    time.sleep(0.05)
    tieconv.inspect("org/tiny-tied", compare=False)  # a hit: now the most recently used
    time.sleep(0.05)
    tieconv.inspect("org/dtypes", compare=False)  # over the bound: tiny-dup, least recently used, goes
    names = sorted(p.name.split("--")[2] for p in hubmod._header_cache_dir().iterdir())
    assert names == ["dtypes", "tiny-tied"], names


# ---------------------------------------------------------------- 4. download only what is needed


def test_dry_run_downloads_no_weight_file(hub, tmp_path, xdg):
    home = tmp_path / "hf"
    result = tieconv(["tie", "org/tiny-dup", tmp_path / "out", "--dry-run", "--json"], endpoint=hub, home=home,
                     xdg=xdg, check=True)
    doc = json.loads(result.stdout)
    assert doc["plan"]["dropped"] == ["lm_head.weight"] and doc["bytes_saved"] == 2048
    assert 2 * 2048 <= doc["downloaded_bytes"] < 64 * 1024  # headers and the two tensors compared, no more
    assert not (tmp_path / "out").exists()
    assert [f for f in cached_files(home, "org/tiny-dup") if f.endswith(".safetensors")] == []


def test_plan_downloads_nothing_and_a_real_tie_downloads_before_executing(hub, tmp_path, monkeypatch):
    import tieconv

    use_endpoint(monkeypatch, hub, tmp_path)
    weights = lambda: sorted(p.name for p in (tmp_path / "hf").rglob("*.safetensors"))  # noqa: E731
    p, report = tieconv.plan("tie", "org/tiny-dup", tmp_path / "out")  # pure: headers and the two ranges only
    assert report.layout == "hub" and p.dropped == ["lm_head.weight"] and p.source == "org/tiny-dup"
    assert weights() == [] and not (tmp_path / "out").exists()
    result = tieconv.tie("org/tiny-dup", tmp_path / "out")
    assert weights() == ["model.safetensors"] and result.verdict == "tied"
    assert result.plan.source == "org/tiny-dup" and result.plan.dropped == ["lm_head.weight"]


def test_tie_downloads_exactly_the_index_shards_and_the_small_files(hub, tmp_path, xdg):
    home = tmp_path / "hf"
    tieconv(["untie", "org/mistral-style", tmp_path / "out", "--force"], endpoint=hub, home=home, xdg=xdg, check=True)
    assert cached_files(home, "org/mistral-style") == [
        "config.json", "generation_config.json", "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors", "model.safetensors.index.json",
        "tokenizer.json"]
    assert sorted(os.listdir(tmp_path / "out")) == [
        "config.json", "generation_config.json", "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors", "model.safetensors.index.json",
        "tokenizer.json"]


def test_files_to_download():
    from tieconv.formats.hub import files_to_download

    files = ["config.json", "consolidated.safetensors", "model.safetensors", "original/model.safetensors",
             "params.json", "tokenizer.model", "README.md", ".gitattributes", "pytorch_model.bin"]
    assert files_to_download(files) == ["README.md", "config.json", "model.safetensors", "params.json",
                                        "tokenizer.model"]


def test_remote_comparison_of_different_dtypes_streams_in_bounded_memory(hub, tmp_path, monkeypatch):
    import tracemalloc

    import tieconv
    from tieconv.formats import checkpoint
    from tieconv.inspection import compare

    use_endpoint(monkeypatch, hub, tmp_path)
    monkeypatch.setattr(compare, "CHUNK_BYTES", 512)

    def whole(self, key):
        raise AssertionError(f"{key} was loaded whole")

    monkeypatch.setattr(checkpoint.Checkpoint, "load_tensor", whole)
    tieconv.inspect("org/dtypes", compare=False)  # learning the architecture imports transformers: not measured
    tracemalloc.start()
    report = tieconv.inspect("org/dtypes")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert report.verdict == "conflict" and report.identical is False and report.equal_after_cast is True
    assert report.head.dtype == "F32" and report.embed.dtype == "BF16"
    assert peak < 4 * 4096 + 512 * 1024, peak


# ---------------------------------------------------------------- 5. bytes measured against a range-honouring server


def test_the_test_server_honours_ranges(hub):
    request = urllib.request.Request(f"{hub}/org/tiny-sharded/resolve/main/model-00001-of-00003.safetensors",
                                     headers={"Range": "bytes=0-7"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 206 and len(response.read()) == 8


def _header_bytes(path: Path) -> int:
    with open(path, "rb") as f:
        return 8 + int.from_bytes(f.read(8), "little")


def test_downloaded_bytes_are_the_config_index_headers_and_the_two_tensors(hub, tmp_path, xdg):
    folder = FIXTURES / "llama-untied-sharded"
    doc = json.loads(tieconv(["inspect", "org/tiny-sharded", "--json"], endpoint=hub, home=tmp_path / "hf", xdg=xdg,
                             check=True).stdout)
    expected = sum((folder / n).stat().st_size for n in ("config.json", "model.safetensors.index.json"))
    expected += sum(_header_bytes(p) for p in folder.glob("*.safetensors"))
    # untied or tieable: only the comparison tells, and it reads exactly the two tensors' ranges
    assert doc["verdict"] == "untied"
    assert doc["downloaded_bytes"] == expected + doc["embed"]["nbytes"] + doc["head"]["nbytes"]


def test_a_llama_shaped_repo_costs_its_headers_or_the_two_tensors(hub, tmp_path, xdg):
    src = tmp_path / "expect"
    tied_files = write_llama_repo(src / "tied", variant="tied", **SMALL_LLAMA)
    dup_files = write_llama_repo(src / "dup", variant="duplicated", **SMALL_LLAMA)
    tied = json.loads(tieconv(["inspect", "org/llama-tied", "--json"], endpoint=hub, home=tmp_path / "hf", xdg=xdg,
                              check=True).stdout)
    config = (src / "tied" / "config.json").stat().st_size
    assert tied["verdict"] == "tied" and len(tied_files) == 3
    assert tied["downloaded_bytes"] - config < 64_000
    assert tied["downloaded_bytes"] == config + (src / "tied" / "model.safetensors.index.json").stat().st_size + sum(
        _header_bytes(p) for p in tied_files.values())
    dup = json.loads(tieconv(["inspect", "org/llama-duplicated", "--json"], endpoint=hub, home=tmp_path / "hf2",
                             xdg=xdg, check=True).stdout)
    headers = sum(_header_bytes(p) for p in dup_files.values())
    index = (src / "dup" / "model.safetensors.index.json").stat().st_size
    assert dup["verdict"] == "duplicated"
    assert dup["downloaded_bytes"] == config + index + headers + dup["embed"]["nbytes"] + dup["head"]["nbytes"]


# ---------------------------------------------------------------- what worked before


@pytest.mark.parametrize("repo,verdict", [("org/tiny-tied", "tied"), ("org/tiny-sharded", "untied"),
                                          ("org/bert", "no-head"), ("org/gpt2-bin", "tied"),
                                          ("org/tiny-dup@main", "duplicated"), ("hf://org/tiny-dup", "duplicated")])
def test_repo_verdicts(hub, tmp_path, xdg, repo, verdict):
    doc = json.loads(tieconv(["inspect", repo, "--json"], endpoint=hub, home=tmp_path / "hf", xdg=xdg,
                             check=True).stdout)
    assert doc["verdict"] == verdict and doc["layout"] == "hub"


def test_no_download_is_undecided(hub, tmp_path, xdg):
    out = tieconv(["inspect", "org/tiny-dup", "--no-download", "--json"], endpoint=hub, home=tmp_path / "hf", xdg=xdg,
                  check=True)
    doc = json.loads(out.stdout)
    assert doc["verdict"] == "undecided" and doc["identical"] is None


def test_tie_a_repo(hub, tmp_path, xdg):
    result = tieconv(["tie", "org/tiny-dup", tmp_path / "out", "--json"], endpoint=hub, home=tmp_path / "hf", xdg=xdg,
                     check=True)
    doc = json.loads(result.stdout)
    assert doc["verdict"] == "tied" and doc["bytes_saved"] == 2048


def test_local_path_wins(hub, tmp_path):
    (tmp_path / "org").mkdir()
    shutil.copytree(FIXTURES / "llama-tied", tmp_path / "org" / "tiny-dup")
    env = {**os.environ, "HF_ENDPOINT": hub, "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run([sys.executable, "-m", "tieconv.cli", "inspect", "org/tiny-dup", "--json"], env=env,
                         capture_output=True, text=True, cwd=tmp_path, check=True)
    doc = json.loads(out.stdout)
    assert doc["verdict"] == "tied" and doc["layout"] == "hf-safetensors"
    assert any("local path was used" in n for n in doc["notes"])


# ---------------------------------------------------------------- 6. many repos at once


def test_scan_takes_repo_ids_mixed_with_folders(hub, tmp_path, xdg):
    result = tieconv(["scan", "org/tiny-tied", "org/tiny-sharded", "org/nope", FIXTURES / "llama-duplicated", "--json"],
                     endpoint=hub, home=tmp_path / "hf", xdg=xdg, check=True)
    rows = {r["name"]: r for r in json.loads(result.stdout)["rows"]}
    assert rows["org/tiny-tied"]["verdict"] == "tied" and rows["org/tiny-tied"]["layout"] == "hub"
    assert rows["org/tiny-sharded"]["verdict"] == "undecided"  # header-only: not compared
    assert rows["llama-duplicated"]["verdict"] == "duplicated"
    assert rows["org/nope"]["verdict"] == "unreadable" and "org/nope@main" in rows["org/nope"]["error"]
    assert not list((tmp_path / "hf").rglob("*.safetensors"))
    # a comparison an earlier inspect made is remembered with the headers, and the scan uses it
    tieconv(["inspect", "org/tiny-sharded"], endpoint=hub, home=tmp_path / "hf", xdg=xdg, check=True)
    again = tieconv(["scan", "org/tiny-sharded", "--json"], endpoint=hub, home=tmp_path / "hf", xdg=xdg, check=True)
    assert json.loads(again.stdout)["rows"][0]["verdict"] == "untied"


def test_a_damaged_header_cache_entry_is_ignored(hub, tmp_path, xdg):
    home = tmp_path / "hf"
    tieconv(["inspect", "org/tiny-tied"], endpoint=hub, home=home, xdg=xdg, check=True)
    (entry,) = (xdg / "tieconv" / "hub-headers-v1").glob("*.json")
    doc = json.loads(entry.read_text())
    doc["headers"] = {"model.safetensors": {"size": "big"}}
    entry.write_text(json.dumps(doc))
    offline = tieconv(["inspect", "org/tiny-tied"], endpoint=UNREACHABLE, home=home, xdg=xdg, offline=True)
    assert offline.returncode == 2 and "HF_HUB_OFFLINE" in offline.stderr, offline.stderr
    online = json.loads(tieconv(["inspect", "org/tiny-tied", "--json"], endpoint=hub, home=home, xdg=xdg,
                                check=True).stdout)
    assert online["verdict"] == "tied" and online["downloaded_bytes"] > 0
