"""download_gpt2 against real HTTP servers on 127.0.0.1, no outside network.

numgpt's urllib path meets a server that behaves like the Hugging Face hub:
resolve/main answers LFS files with a 302 carrying X-Linked-ETag (the sha256)
and X-Linked-Size, the CDN serves the bytes with Range support. The server can
cut a transfer short, ignore Range, announce a wrong checksum, or send slowly
while two processes fetch the same file.

The huggingface_hub path meets tests/hub_server.py, which answers HEAD and GET
on resolve/ as the hub does; the Hugging Face cache lookup reads caches built
by tests/hub_cache.py. Every test runs with HF_HOME in its own temporary
directory and no HF_* variable from outside.
"""
import hashlib
import http.server
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hub_cache import place_in_hf_cache
from hub_server import COMMIT, HubServer

from numgpt.io import download
from numgpt.io.download import DownloadError, canonical_size, default_cache_dir, download_gpt2, find_in_hf_cache

TINY_GPT2 = Path(__file__).parent / "reference" / "hf_gpt2_tiny"       # a transformers-written GPT-2 directory

CONFIG = b'{"n_embd": 8, "n_layer": 1, "n_head": 2}\n'
WEIGHTS = bytes(range(256)) * 40 + b"tail"          # 10244 bytes


class HubHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        hub = self.server.hub
        hub.log.append((self.path, self.headers.get("Range")))
        match = re.match(r"^/openai-community/([\w-]+)/resolve/main/(model\.safetensors|config\.json)$", self.path)
        if match and match.group(2) == "model.safetensors":           # LFS: redirect to the CDN
            self.send_response(302)
            self.send_header("Location", f"/cdn/{match.group(1)}/model.safetensors")
            if hub.linked_etag:
                self.send_header("X-Linked-ETag", f'"{hub.linked_etag}"')
            self.send_header("X-Linked-Size", str(hub.linked_size or len(hub.weights)))
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif match:                                                    # a small git file
            self.send_body(CONFIG, etag=hashlib.sha1(CONFIG).hexdigest())
        elif re.match(r"^/cdn/[\w-]+/model\.safetensors$", self.path):
            self.send_body(hub.weights, etag=hashlib.md5(hub.weights).hexdigest())
        else:
            self.send_error(404)

    def send_body(self, data, etag):
        hub = self.server.hub
        start = 0
        ranged = re.match(r"bytes=(\d+)-$", self.headers.get("Range") or "")
        if ranged and not hub.ignore_range:
            start = int(ranged.group(1))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("ETag", f'"{etag}"')
        self.end_headers()
        body = data[start:]
        if hub.slow:                                                   # ten pieces, 0.05 s apart
            for i in range(10):
                self.wfile.write(body[i * len(body) // 10:(i + 1) * len(body) // 10])
                self.wfile.flush()
                time.sleep(0.05)
            return
        if hub.cuts and len(data) > len(CONFIG):                       # cut this transfer short
            body = body[:hub.cuts.pop(0)]
            self.wfile.write(body)
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)


class Hub:
    def __init__(self):
        self.weights = WEIGHTS
        self.linked_etag = hashlib.sha256(WEIGHTS).hexdigest()
        self.linked_size = None
        self.ignore_range = False
        self.slow = False
        self.cuts = []                                                 # bytes to send before cutting, per transfer
        self.log = []                                                  # (path, Range header) per request

    def requests_for(self, suffix):
        return [entry for entry in self.log if entry[0].endswith(suffix)]


@pytest.fixture(autouse=True)
def hf_environment(tmp_path, monkeypatch):
    """An empty Hugging Face home of the test's own; no HF_* setting from outside."""
    for name in ("HF_HUB_CACHE", "HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_TOKEN", "NUMGPT_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    return tmp_path / "hf_home" / "hub"


@pytest.fixture
def hub():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HubHandler)
    server.hub = Hub()
    server.hub.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server.hub
    server.shutdown()
    server.server_close()


def fetch(hub, tmp_path, size="gpt2-355m", **kwargs):
    """numgpt's urllib path (huggingface_hub is installed here, and would be taken first)."""
    return download_gpt2(size, cache_dir=tmp_path, base_url=hub.base_url, progress=False, hub=False, **kwargs)


def test_download_follows_the_hub_redirect_and_checks_the_linked_etag(hub, tmp_path):
    directory = fetch(hub, tmp_path)
    assert directory == tmp_path / "gpt2-medium"
    assert (directory / "model.safetensors").read_bytes() == WEIGHTS
    assert (directory / "config.json").read_bytes() == CONFIG
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors"]   # no .part left
    assert [path for path, _ in hub.log] == ["/openai-community/gpt2-medium/resolve/main/config.json",
                                             "/openai-community/gpt2-medium/resolve/main/model.safetensors",
                                             "/cdn/gpt2-medium/model.safetensors"]
    hub.log.clear()
    assert fetch(hub, tmp_path) == directory and hub.log == []         # cached: no request


def test_a_cut_download_resumes_with_a_range_request(hub, tmp_path):
    hub.cuts = [3000]
    with pytest.raises(DownloadError) as error:
        fetch(hub, tmp_path, retries=0)
    part = tmp_path / "gpt2-medium" / "model.safetensors.part"
    assert part.read_bytes() == WEIGHTS[:3000]
    message = str(error.value)
    assert "cut off" in message and str(part) in message
    assert f"{hub.base_url}/openai-community/gpt2-medium/resolve/main/model.safetensors" in message
    assert str(tmp_path / "gpt2-medium" / "model.safetensors") in message

    hub.log.clear()
    fetch(hub, tmp_path, retries=0)
    assert (tmp_path / "gpt2-medium" / "model.safetensors").read_bytes() == WEIGHTS
    assert not part.exists()
    # the Range header survives the redirect to the CDN
    assert hub.log == [("/openai-community/gpt2-medium/resolve/main/model.safetensors", "bytes=3000-"),
                       ("/cdn/gpt2-medium/model.safetensors", "bytes=3000-")]


def test_cuts_are_retried_within_one_call(hub, tmp_path):
    hub.cuts = [1000, 2500]
    fetch(hub, tmp_path, retries=2)
    assert (tmp_path / "gpt2-medium" / "model.safetensors").read_bytes() == WEIGHTS
    assert [r for _, r in hub.requests_for("/cdn/gpt2-medium/model.safetensors")] == \
        [None, "bytes=1000-", "bytes=3500-"]


@pytest.mark.parametrize("part_bytes", [WEIGHTS[:3000], b"\xff" * 3000], ids=["right-part", "garbage-part"])
def test_a_server_that_ignores_range_restarts_the_file(hub, tmp_path, part_bytes):
    hub.ignore_range = True
    (tmp_path / "gpt2-medium").mkdir()
    (tmp_path / "gpt2-medium" / "model.safetensors.part").write_bytes(part_bytes)
    fetch(hub, tmp_path)
    assert (tmp_path / "gpt2-medium" / "model.safetensors").read_bytes() == WEIGHTS
    assert hub.requests_for("/cdn/gpt2-medium/model.safetensors") == [("/cdn/gpt2-medium/model.safetensors",
                                                                       "bytes=3000-")]


def test_a_wrong_linked_etag_is_rejected(hub, tmp_path):
    hub.linked_etag = hashlib.sha256(b"another file").hexdigest()
    with pytest.raises(DownloadError, match="corrupt") as error:
        fetch(hub, tmp_path)
    assert f"but the ETag header sha256 is {hub.linked_etag}" in str(error.value)
    assert sorted(p.name for p in (tmp_path / "gpt2-medium").iterdir()) == ["config.json"]   # nothing kept


def test_corrupted_bytes_are_rejected_by_the_linked_etag(hub, tmp_path):
    hub.weights = WEIGHTS[:-4] + b"TAIL"                               # same size, other bytes
    with pytest.raises(DownloadError, match="sha256"):
        fetch(hub, tmp_path)
    assert not (tmp_path / "gpt2-medium" / "model.safetensors").exists()


def test_a_size_that_disagrees_with_x_linked_size_is_rejected(hub, tmp_path):
    hub.linked_size = len(WEIGHTS) + 1
    with pytest.raises(DownloadError, match=f"size {len(WEIGHTS)} bytes, but X-Linked-Size says {len(WEIGHTS) + 1}"):
        fetch(hub, tmp_path)


def test_a_pinned_sha256_decides_over_the_header(hub, tmp_path, monkeypatch):
    assert re.fullmatch(r"[0-9a-f]{64}", download.EXPECTED_FILES[("gpt2-124m", "model.safetensors")][1])
    monkeypatch.setitem(download.EXPECTED_FILES, ("gpt2-355m", "model.safetensors"),
                        (len(WEIGHTS), hashlib.sha256(b"the pinned file").hexdigest()))
    with pytest.raises(DownloadError, match="but the expected sha256 is"):
        fetch(hub, tmp_path)
    hub.linked_etag = None                                             # no header: the pinned hash alone
    monkeypatch.setitem(download.EXPECTED_FILES, ("gpt2-355m", "model.safetensors"),
                        (len(WEIGHTS), hashlib.sha256(WEIGHTS).hexdigest()))
    assert (fetch(hub, tmp_path) / "model.safetensors").read_bytes() == WEIGHTS


def test_offline_names_the_url_and_the_path(tmp_path):
    with socket.socket() as s:                                         # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError) as error:
        download_gpt2("124m", cache_dir=tmp_path, base_url=f"http://127.0.0.1:{port}", progress=False, hub=False)
    message = str(error.value)
    assert f"http://127.0.0.1:{port}/openai-community/gpt2/resolve/main/config.json" in message
    assert str(tmp_path / "gpt2" / "config.json") in message and "offline" in message
    # and what else to fetch, so that one message is enough
    assert f"curl -L -o '{tmp_path / 'gpt2' / 'model.safetensors'}' " \
        f"'http://127.0.0.1:{port}/openai-community/gpt2/resolve/main/model.safetensors'" in message


def test_http_errors_name_the_status(hub, tmp_path, monkeypatch):
    monkeypatch.setattr(download, "FILES", ("tokenizer.json",))        # a file this hub does not have
    with pytest.raises(DownloadError, match="answered HTTP 404"):
        fetch(hub, tmp_path)


def test_size_names_and_cache_dir(monkeypatch, tmp_path):
    assert [canonical_size(n) for n in ("gpt2-124m", "124m", "355M", "gpt2-large", "openai-community/gpt2-xl",
                                        "gpt2", "7b", tmp_path)] == \
        ["gpt2-124m", "gpt2-124m", "gpt2-355m", "gpt2-774m", "gpt2-1558m", "gpt2-124m", None, None]
    monkeypatch.setenv("NUMGPT_HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home"
    monkeypatch.delenv("NUMGPT_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "numgpt"
    with pytest.raises(ValueError, match="unknown GPT-2 size"):
        download_gpt2("gpt2-7b", cache_dir=tmp_path)


# ---------------------------------------------------------------- two processes, one file

WORKER = """
import sys, time
from pathlib import Path
from numgpt.io.download import download_gpt2
cache, url, me, other = sys.argv[1:]
Path(me).touch()                                    # ready; start together with the other process
while not Path(other).exists():
    time.sleep(0.005)
start = time.time()
download_gpt2("355m", cache_dir=cache, base_url=url, progress=False, hub=False)
print(start, time.time())
"""


def test_two_processes_fetching_the_same_file_take_turns(hub, tmp_path):
    hub.slow = True                                                    # each transfer takes 0.5 s
    ready = [tmp_path / "ready-0", tmp_path / "ready-1"]
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path / "cache"), hub.base_url,
                                 str(ready[i]), str(ready[1 - i])], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for i in range(2)]
    results = [worker.communicate(timeout=120) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], results
    (start0, end0), (start1, end1) = (map(float, out.split()) for out, _ in results)
    assert max(start0, start1) < min(end0, end1), "the two downloads did not overlap in time"
    directory = tmp_path / "cache" / "gpt2-medium"
    written = (directory / "model.safetensors").read_bytes()
    assert hashlib.sha256(written).hexdigest() == hashlib.sha256(WEIGHTS).hexdigest()
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors"]   # no .part, no .lock
    # each file crossed the wire once: the second process waited, then took the first one's file
    assert len(hub.requests_for("/cdn/gpt2-medium/model.safetensors")) == 1
    assert len(hub.requests_for("/resolve/main/config.json")) == 1


# ---------------------------------------------------------------- the Hugging Face cache

@pytest.mark.parametrize("repo_id", ["openai-community/gpt2", "gpt2"])
@pytest.mark.parametrize("symlinks", [True, False], ids=["blobs", "plain-files"])
def test_a_size_is_found_in_the_hf_cache_under_either_id(hf_environment, tmp_path, repo_id, symlinks, monkeypatch):
    snapshot = place_in_hf_cache(hf_environment, repo_id, TINY_GPT2, symlinks=symlinks)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)         # the lookup must not need it
    assert download_gpt2("124m", cache_dir=tmp_path / "numgpt") == snapshot
    assert (snapshot / "model.safetensors").is_symlink() is symlinks
    assert find_in_hf_cache("gpt2-355m") is None and not (tmp_path / "numgpt").exists()


def test_the_hf_cache_is_looked_in_for_every_size_and_before_numgpts_own(hf_environment, tmp_path):
    large = place_in_hf_cache(hf_environment, "openai-community/gpt2-large", TINY_GPT2)
    assert download_gpt2("774m", base_url="http://127.0.0.1:9") == large            # nothing listens there
    numgpt_cache = tmp_path / "numgpt" / "gpt2-xl"
    numgpt_cache.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (numgpt_cache / name).write_bytes((TINY_GPT2 / name).read_bytes())
    assert download_gpt2("1558m", cache_dir=tmp_path / "numgpt") == numgpt_cache
    xl = place_in_hf_cache(hf_environment, "gpt2-xl", TINY_GPT2)
    assert download_gpt2("1558m", cache_dir=tmp_path / "numgpt") == xl


def test_refs_main_decides_and_any_whole_snapshot_is_the_fallback(hf_environment):
    old = place_in_hf_cache(hf_environment, "openai-community/gpt2", TINY_GPT2, commit="b" * 40, ref=False)
    main = place_in_hf_cache(hf_environment, "openai-community/gpt2", TINY_GPT2, commit="c" * 40)
    os.utime(old, (time.time() + 100, time.time() + 100))              # the newest snapshot, but not main's
    assert find_in_hf_cache("gpt2-124m") == main
    (main / "model.safetensors").unlink()                               # main's snapshot is incomplete
    assert find_in_hf_cache("gpt2-124m") == old
    refs = hf_environment / "models--openai-community--gpt2" / "refs" / "main"
    refs.write_text("../../../../elsewhere")                            # not a commit hash: ignored
    assert find_in_hf_cache("gpt2-124m") == old
    (old / "config.json").unlink()
    assert find_in_hf_cache("gpt2-124m") is None


def test_the_hf_cache_follows_hf_hub_cache_then_hf_home_then_xdg(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert download.hf_hub_cache() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert download.hf_hub_cache() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    assert download.hf_hub_cache() == tmp_path / "hub-cache"


# ---------------------------------------------------------------- through huggingface_hub

def tiny_hub_files(repo_id="openai-community/gpt2-medium"):
    return {(repo_id, name): (TINY_GPT2 / name).read_bytes() for name in ("config.json", "model.safetensors")}


def test_huggingface_hub_downloads_into_the_hf_cache_through_hf_endpoint(hf_environment, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_numgpt_test_token")
    with HubServer(tiny_hub_files()) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        directory = download_gpt2("355m", cache_dir=tmp_path / "numgpt")
        requests = [(method, path) for method, path, _ in server.requests if "/resolve/" in path]
        tokens = {auth for _, path, auth in server.requests if "/resolve/" in path}
    repo = hf_environment / "models--openai-community--gpt2-medium"
    assert directory == repo / "snapshots" / COMMIT
    assert (repo / "refs" / "main").read_text() == COMMIT
    weights = (TINY_GPT2 / "model.safetensors").read_bytes()
    assert (directory / "model.safetensors").resolve() == repo / "blobs" / hashlib.sha256(weights).hexdigest()
    for name in ("config.json", "model.safetensors"):
        assert (directory / name).read_bytes() == (TINY_GPT2 / name).read_bytes()
    assert requests == [(method, f"/openai-community/gpt2-medium/resolve/{revision}/{name}")
                        for name, revision in (("config.json", "main"), ("model.safetensors", COMMIT))
                        for method in ("HEAD", "GET")]                 # the second file pinned to the first's commit
    assert tokens == {"Bearer hf_numgpt_test_token"}
    assert not (tmp_path / "numgpt").exists()
    # the server is gone: the next call finds the files in the cache
    assert download_gpt2("355m", cache_dir=tmp_path / "numgpt", hub=True) == directory


def test_a_hub_download_whose_sha256_is_not_the_announced_one_is_deleted(hf_environment, monkeypatch):
    with HubServer(tiny_hub_files()) as server:
        server.announced_sha256["model.safetensors"] = announced = hashlib.sha256(b"other bytes").hexdigest()
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        with pytest.raises(DownloadError, match=f"corrupt .*expected sha256 {announced}") as error:
            download_gpt2("355m")
    blob = hf_environment / "models--openai-community--gpt2-medium" / "blobs" / announced
    assert str(blob) in str(error.value) and not blob.exists()
    assert not (hf_environment / "models--openai-community--gpt2-medium" / "snapshots" / COMMIT /
                "model.safetensors").exists()


def test_the_pinned_sha256_decides_on_the_hub_path_too(hf_environment, monkeypatch):
    monkeypatch.setitem(download.EXPECTED_FILES, ("gpt2-355m", "model.safetensors"),
                        (10, hashlib.sha256(b"the pinned file").hexdigest()))
    with HubServer(tiny_hub_files()) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        with pytest.raises(DownloadError, match="but expected sha256 .* and 10 bytes"):
            download_gpt2("355m")


def test_hub_errors_name_the_repository_the_file_and_what_to_do(monkeypatch, tmp_path):
    with HubServer(tiny_hub_files("openai-community/gpt2")) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        with pytest.raises(DownloadError) as error:
            download_gpt2("355m", cache_dir=tmp_path / "numgpt")        # a repository this mirror lacks
        message = str(error.value)
        assert "config.json of openai-community/gpt2-medium" in message and "has no repository" in message
        assert "HF_TOKEN" in message and str(tmp_path / "numgpt" / "gpt2-medium" / "config.json") in message
        del server.files["openai-community/gpt2", "model.safetensors"]
        with pytest.raises(DownloadError, match="openai-community/gpt2 on .* has no file model.safetensors"):
            download_gpt2("124m")


@pytest.mark.parametrize("use_hub", [True, False], ids=["huggingface_hub", "urllib"])
def test_hf_hub_offline_with_empty_caches_is_a_download_error(monkeypatch, tmp_path, use_hub):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")             # never asked
    with pytest.raises(DownloadError, match="HF_HUB_OFFLINE is set") as error:
        download_gpt2("124m", cache_dir=tmp_path / "numgpt", hub=use_hub)
    assert "openai-community/gpt2" in str(error.value) and "config.json" in str(error.value)


def test_without_huggingface_hub_the_urllib_path_downloads(hub, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)           # `import huggingface_hub` fails
    directory = download_gpt2("355m", cache_dir=tmp_path / "numgpt", base_url=hub.base_url, progress=False)
    assert directory == tmp_path / "numgpt" / "gpt2-medium"
    assert (directory / "model.safetensors").read_bytes() == WEIGHTS


def test_importing_numgpt_does_not_import_huggingface_hub():
    code = "import sys, numgpt, numgpt.io.download, numgpt.io.pretrained; print('huggingface_hub' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
