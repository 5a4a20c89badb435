"""download_gpt2 against a real HTTP server on 127.0.0.1 that behaves like the
Hugging Face hub: resolve/main answers LFS files with a 302 carrying
X-Linked-ETag (the sha256) and X-Linked-Size, the CDN serves the bytes with
Range support. The server can cut a transfer short, ignore Range, or announce
a wrong checksum. No outside network."""
import hashlib
import http.server
import re
import socket
import threading

import pytest

from numgpt import download
from numgpt.download import DownloadError, canonical_size, default_cache_dir, download_gpt2

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
        self.cuts = []                                                 # bytes to send before cutting, per transfer
        self.log = []                                                  # (path, Range header) per request

    def requests_for(self, suffix):
        return [entry for entry in self.log if entry[0].endswith(suffix)]


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
    return download_gpt2(size, cache_dir=tmp_path, base_url=hub.base_url, progress=False, **kwargs)


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
        download_gpt2("124m", cache_dir=tmp_path, base_url=f"http://127.0.0.1:{port}", progress=False)
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
