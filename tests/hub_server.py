"""A local Hub for the tests: olah serving local git repos, behind nginx honouring HTTP ranges.

olah answers every file request with the whole file (status 200, no ranges, and no Content-Length
either), so byte counts measured against it alone say nothing about range reads.  nginx in front of it
answers `Range` requests with 206 and exactly the asked bytes, as the Hub's CDN does.  nginx honours
ranges only on answers whose length it knows, which olah's are not even once cached (`proxy_cache`
keeps them chunked), so file contents go through `proxy_store`: each file is fetched from olah once
(`_warm`, as a CDN already holding it) and then served, ranges and all, from nginx's store.  HEAD
requests (ETag, X-Repo-Commit) and the API go to olah through `proxy_cache`.  olah's `mirror-netloc`
points at nginx, so its redirects come back through nginx too.  Both listen on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


class ServerMissing(RuntimeError):
    """nginx or olah is not installed."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_git_repo(dst: Path, source: Path | None = None, lfs: dict[str, Path] | None = None) -> Path:
    """A git repo at `dst` holding `source`'s files; `lfs` maps file names to (sparse) files stored as LFS objects.

    LFS objects are hard-linked into `.git/lfs/objects` (olah reads them from there), so a
    multi-GB sparse shard costs no disk and git never hashes its bytes.
    """
    dst.mkdir(parents=True, exist_ok=True)
    if source is not None:
        shutil.copytree(source, dst, dirs_exist_ok=True)
    for name, big in (lfs or {}).items():
        oid = hashlib.sha256(f"{name}:{big.stat().st_size}:{big}".encode()).hexdigest()  # any unique id will do
        obj = dst / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
        obj.parent.mkdir(parents=True, exist_ok=True)
        os.link(big, obj)
        (dst / name).write_text(f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\n"
                                f"size {big.stat().st_size}\n")
    env = {**os.environ, **GIT_ENV}
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=dst, check=True, env=env, capture_output=True)
    return dst


def repo_commit(path: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, check=True, capture_output=True,
                          text=True).stdout.strip()


def _wait(url: str, proc: subprocess.Popen, log: Path, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:  # refused, reset, or an HTTP error while it starts
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"{what} did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


NGINX_CONF = """\
{user}
worker_processes 1;
daemon off;
pid {base}/nginx.pid;
error_log {base}/nginx-error.log warn;
events {{ worker_connections 256; }}
http {{
  access_log {base}/nginx-access.log;
  client_body_temp_path {base}/tmp/body;
  proxy_temp_path {base}/tmp/proxy;
  fastcgi_temp_path {base}/tmp/fastcgi;
  uwsgi_temp_path {base}/tmp/uwsgi;
  scgi_temp_path {base}/tmp/scgi;
  proxy_cache_path {base}/cache levels=1:2 keys_zone=hub:8m inactive=1d use_temp_path=off;
  server {{
    listen 127.0.0.1:{port};
    root {base}/store;
    proxy_read_timeout 600s;
    proxy_force_ranges on;
    # file contents: served from the store (Range honoured, 206), fetched from olah once on a miss
    # (stored by repo and file name, whatever the revision: each test repo has one commit)
    location ~ ^/(?<repo>[^/]+/[^/]+)/resolve/[^/]+/(?<file>.+)$ {{
      if ($request_method = HEAD) {{ return 418; }}
      error_page 418 = @olah;
      try_files /$repo/$file @store;
    }}
    location @store {{
      proxy_pass http://127.0.0.1:{upstream};
      proxy_store {base}/store/$repo/$file;
    }}
    # HEAD (ETag, X-Repo-Commit, size) and the API: olah, cached
    location @olah {{
      proxy_pass http://127.0.0.1:{upstream};
      proxy_cache hub;
      proxy_cache_key $request_method$request_uri;
      proxy_cache_convert_head off;
      proxy_cache_valid 200 1d;
    }}
    location / {{
      proxy_pass http://127.0.0.1:{upstream};
    }}
  }}
}}
"""


def _warm(endpoint: str, repo: str, folder: Path) -> None:
    """Fetch each file once so nginx's store holds it, as a CDN would.

    olah's GET answers carry no Content-Length, and nginx honours ranges only on answers whose
    length it knows: static files in its store.  After this, every file read is a range read.
    """
    files = subprocess.run(["git", "ls-files"], cwd=folder, check=True, capture_output=True,
                           text=True).stdout.split()
    for name in files:
        with urllib.request.urlopen(f"{endpoint}/{repo}/resolve/main/{name}", timeout=600) as r:
            while r.read(1 << 20):
                pass


@contextlib.contextmanager
def local_hub(base: Path, repos: dict[str, Path]):
    """Serve `repos` (repo id -> git repo folder, moved under `base`) through nginx -> olah; yield the endpoint."""
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if nginx is None:
        raise ServerMissing("nginx is not installed (apt-get install -y nginx)")
    try:
        import olah  # noqa: F401
    except ImportError:
        raise ServerMissing("olah is not installed (pip install -e '.[test]')") from None
    mirrors = base / "mirrors" / "models"
    for repo, folder in repos.items():
        (mirrors / repo).parent.mkdir(parents=True, exist_ok=True)
        if folder != mirrors / repo:
            shutil.move(str(folder), mirrors / repo)
    olah_port, nginx_port = free_port(), free_port()
    netloc = f"127.0.0.1:{nginx_port}"
    (base / "olah.toml").write_text(
        f'[basic]\nhost = "127.0.0.1"\nport = {olah_port}\nmirror-netloc = "{netloc}"\n'
        f'mirror-lfs-netloc = "{netloc}"\nmirrors-path = ["{base / "mirrors"}"]\n'
        f'repos-path = "{base / "repos"}"\n\n[accessibility]\noffline = true\n')
    for sub in ("tmp", "cache"):
        (base / sub).mkdir(exist_ok=True)
    user = "user root;" if hasattr(os, "geteuid") and os.geteuid() == 0 else ""
    (base / "nginx.conf").write_text(NGINX_CONF.format(user=user, base=base, port=nginx_port, upstream=olah_port))
    olah_log, nginx_log = base / "olah.log", base / "nginx-start.log"
    with open(olah_log, "w") as olog, open(nginx_log, "w") as nlog:
        # olah's console script `olah-cli` is `olah.server:cli`; run it with this interpreter (no PATH lookup)
        olah_proc = subprocess.Popen([sys.executable, "-c", "import sys; from olah.server import cli; sys.exit(cli())",
                                      "-c", str(base / "olah.toml")], cwd=base, stdout=olog, stderr=olog)
        nginx_proc = None
        try:
            first = next(iter(repos))
            _wait(f"http://127.0.0.1:{olah_port}/api/models/{first}/revision/main", olah_proc, olah_log, "olah")
            nginx_proc = subprocess.Popen([nginx, "-c", str(base / "nginx.conf"), "-p", str(base)],
                                          stdout=nlog, stderr=nlog)
            _wait(f"http://{netloc}/api/models/{first}/revision/main", nginx_proc, nginx_log, "nginx")
            for repo in repos:
                _warm(f"http://{netloc}", repo, mirrors / repo)
            yield f"http://{netloc}"
        finally:
            if nginx_proc is not None:
                _stop(nginx_proc)
            _stop(olah_proc)


# ---------------------------------------------------------------- Llama-shaped repos with sparse shards

LLAMA_3_2_1B = {"vocab": 128256, "hidden": 2048, "layers": 16, "intermediate": 8192, "heads": 32, "kv_heads": 8}


def write_llama_repo(folder: Path, *, variant: str, vocab: int, hidden: int, layers: int, intermediate: int,
                     heads: int, kv_heads: int, shard_bytes: int = 1_000_000_000) -> dict[str, Path]:
    """A Llama-shaped bf16 safetensors folder with sparse shards (every value zero) and an index.

    `variant` is "tied" (no lm_head stored, the flag ties) or "duplicated" (lm_head stored, equal to the
    embedding). The shards are written as a header and a hole, as a real safetensors file lays them out.
    Returns the weight files by name.
    """
    import struct

    head_dim = hidden // heads
    names: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        names += [(p + "self_attn.q_proj.weight", (hidden, hidden)),
                  (p + "self_attn.k_proj.weight", (kv_heads * head_dim, hidden)),
                  (p + "self_attn.v_proj.weight", (kv_heads * head_dim, hidden)),
                  (p + "self_attn.o_proj.weight", (hidden, hidden)),
                  (p + "mlp.gate_proj.weight", (intermediate, hidden)), (p + "mlp.up_proj.weight", (intermediate, hidden)),
                  (p + "mlp.down_proj.weight", (hidden, intermediate)), (p + "input_layernorm.weight", (hidden,)),
                  (p + "post_attention_layernorm.weight", (hidden,))]
    names.append(("model.norm.weight", (hidden,)))
    if variant == "duplicated":
        names.append(("lm_head.weight", (vocab, hidden)))
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in names:
        nbytes = 2 * _numel(shape)
        if groups[-1] and size + nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append((name, shape))
        size += nbytes
    folder.mkdir(parents=True, exist_ok=True)
    weight_map, files, total = {}, {}, 0
    for k, group in enumerate(groups, 1):
        fname = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
        header: dict = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, shape in group:
            nbytes = 2 * _numel(shape)
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
            weight_map[name] = fname
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        with open(folder / fname, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            f.truncate(8 + len(raw) + offset)
        files[fname] = folder / fname
        total += offset
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2))
    config = json.loads((Path(__file__).resolve().parent.parent / "fixtures" / "llama-tied" / "config.json").read_text())
    config.update(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, intermediate_size=intermediate,
                  num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
                  tie_word_embeddings=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "generation_config.json").write_text('{"bos_token_id": 1, "eos_token_id": 2}\n')
    return files


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
