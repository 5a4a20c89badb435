"""numgpt.io.hub against a stand-in for the Hugging Face hub on 127.0.0.1 (tests/hub_server.py).

``snapshot_download`` meets the routes the hub answers: the revision API, the
tree listing, then HEAD and GET on resolve/ for each file. Every test runs with
HF_HOME in its own temporary directory, no HF_* variable from outside, and a
socket guard that refuses any connection beyond 127.0.0.1 (huggingface_hub
would otherwise ask huggingface.co for its agent registry, with the endpoint it
read at import) and counts the connections tried.
"""
import fnmatch
import hashlib
import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hub_cache import place_in_hf_cache
from hub_server import COMMIT, HubServer

from numgpt.io.download import DownloadError
from numgpt.io.hf_weights import WeightsError, save_weights, tensor_index, weight_files
from numgpt.io.hub import MODEL_FILE_PATTERNS, ModelSourceError, download_model, parse_repo_id, resolve_model_dir

REPO = "numgpt-test/tiny-llama"
TINY_GPT2 = Path(__file__).parent / "reference" / "hf_gpt2_tiny"
MODEL_FILES = {                                   # what numgpt fetches
    "config.json": b'{"model_type": "llama"}\n',
    "generation_config.json": b'{"bos_token_id": 1}\n',
    "model.safetensors": (TINY_GPT2 / "model.safetensors").read_bytes(),
    "tokenizer.json": b'{"version": "1.0"}\n',
    "tokenizer_config.json": b'{"model_max_length": 64}\n',
    "special_tokens_map.json": b'{"eos_token": "</s>"}\n',
}
OTHER_FILES = {                                   # what it leaves on the hub
    "pytorch_model.bin": b"\x80\x02}q\x00.",
    "original/consolidated.00.pth": b"PK\x03\x04 a zip",
    "README.md": b"# tiny\n",
    ".gitattributes": b"*.safetensors filter=lfs\n",
}


@pytest.fixture(autouse=True)
def hf_environment(tmp_path, monkeypatch):
    """An empty Hugging Face home of the test's own; no HF_* setting from outside. huggingface_hub
    reads HF_HUB_OFFLINE once, when first imported (by whichever test came first, under its
    settings): it is told online here, and a test that sets HF_HUB_OFFLINE tests numgpt's own reading."""
    from huggingface_hub import constants
    for name in ("HF_HUB_CACHE", "HF_ENDPOINT", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "NUMGPT_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    return tmp_path / "hf_home" / "hub"


class SocketGuard:
    """Connections to 127.0.0.1 only (none at all once ``block_all``); ``attempts`` lists every address tried."""

    def __init__(self):
        self.attempts, self.block_all = [], False


@pytest.fixture(autouse=True)
def sockets(monkeypatch):
    guard = SocketGuard()
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def guarded_connect(sock, address):
        guard.attempts.append(address)
        if guard.block_all or not (isinstance(address, tuple) and address[0] == "127.0.0.1"):
            raise ConnectionRefusedError(f"test socket guard: no connection to {address}")
        return connect(sock, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost"):
            raise socket.gaierror(f"test socket guard: no name lookup of {host}")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    return guard


def hub_files(repo=REPO, files=None):
    return {(repo, name): data for name, data in (files or {**MODEL_FILES, **OTHER_FILES}).items()}


def paths(server):
    """(method, path) of the requests about repositories (not huggingface_hub's /api/agent-harnesses)."""
    return [(method, path) for method, path, _ in server.requests if "/api/agent-harnesses" not in path]


# ---------------------------------------------------------------- downloading

def test_a_download_fills_the_hf_cache_with_the_model_files_only(hf_environment, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_numgpt_test_token")
    with HubServer(hub_files()) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        snapshot = download_model(REPO)
    repo = hf_environment / "models--numgpt-test--tiny-llama"
    assert snapshot == repo / "snapshots" / COMMIT
    assert (repo / "refs" / "main").read_text() == COMMIT
    assert sorted(p.name for p in snapshot.iterdir()) == sorted(MODEL_FILES)
    for name, data in MODEL_FILES.items():
        blob = (snapshot / name).resolve()
        assert (snapshot / name).is_symlink() and blob.parent == repo / "blobs"
        assert blob.name == (hashlib.sha256(data).hexdigest() if name.endswith(".safetensors") else
                             hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest())      # LFS sha256, git sha1
        assert (snapshot / name).read_bytes() == data
    requested = paths(server)
    assert requested[:2] == [("GET", f"/api/models/{REPO}/revision/main"),
                             ("GET", f"/api/models/{REPO}/tree/{COMMIT}?recursive=true&expand=false")]
    fetched = {path.rsplit("/resolve/", 1)[1] for _, path in requested if "/resolve/" in path}
    assert fetched == {f"{COMMIT}/{name}" for name in MODEL_FILES}                 # pinned to the commit
    assert not [path for _, path in requested if path.endswith((".bin", ".pth", ".md", ".gitattributes"))]
    assert {auth for _, path, auth in server.requests if REPO in path} == {"Bearer hf_numgpt_test_token"}
    assert list(tensor_index(snapshot)) == list(tensor_index(TINY_GPT2))            # through the symlinks


def test_the_second_resolve_needs_no_network(hf_environment, monkeypatch, sockets):
    with HubServer(hub_files()) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        snapshot = resolve_model_dir(REPO)
        requests = len(server.requests)
        assert resolve_model_dir(REPO) == snapshot                      # online: asked again, nothing fetched
        assert not [p for _, p in paths(server)[requests:] if "/resolve/" in p]
    # the server is gone: snapshot_download falls back to the cache by itself
    assert resolve_model_dir(REPO) == snapshot
    sockets.block_all = True                                            # no socket may connect at all
    sockets.attempts.clear()
    assert resolve_model_dir(REPO) == snapshot
    assert sockets.attempts, "expected huggingface_hub to try the hub and fall back"
    # HF_HUB_OFFLINE: the hub is not even tried
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sockets.attempts.clear()
    assert resolve_model_dir(REPO) == snapshot == download_model(REPO, revision="main")
    assert sockets.attempts == []


def test_what_transformers_left_in_the_cache_is_used(hf_environment, monkeypatch, sockets):
    """A snapshot laid out by hand as huggingface_hub's hf_hub_download leaves it (no tree listing):
    offline it is used as it is; online only the files it lacks are fetched."""
    snapshot = place_in_hf_cache(hf_environment, REPO, TINY_GPT2, commit=COMMIT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model_dir(REPO) == snapshot and sockets.attempts == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with HubServer(hub_files()) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        assert resolve_model_dir(REPO) == snapshot
    fetched = {path.rsplit("/", 1)[1] for method, path in paths(server) if method == "GET" and "/resolve/" in path}
    assert fetched == set(MODEL_FILES) - {"config.json", "model.safetensors"}
    assert sorted(p.name for p in snapshot.iterdir()) == sorted(MODEL_FILES)


def test_a_sharded_repository_and_a_pinned_revision(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    state = {f"model.layers.{i}.mlp.up_proj.weight": rng.standard_normal((4, 8)).astype(np.float32)
             for i in range(3)}
    save_weights(state, tmp_path / "made", max_shard_bytes=200)
    files = {"config.json": b"{}"} | {p.name: p.read_bytes() for p in (tmp_path / "made").iterdir()}
    assert len(files) == 5                                              # config, 3 shards, index
    with HubServer(hub_files(files=files)) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        snapshot = resolve_model_dir(f"{REPO}@{COMMIT}")               # a commit: no revision API call
        assert not [p for _, p in paths(server) if "/revision/" in p]
    assert sorted(p.name for p in snapshot.iterdir()) == sorted(files)
    assert [p.name for p in weight_files(snapshot)] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert set(tensor_index(snapshot)) == set(state)


# ---------------------------------------------------------------- errors

def test_a_repository_the_hub_does_not_have(monkeypatch):
    with HubServer(hub_files()) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        with pytest.raises(DownloadError) as error:
            resolve_model_dir("numgpt-test/no-such-model")
    message = str(error.value)
    print(message)
    assert f"{server.url} has no repository numgpt-test/no-such-model that you may read" in message
    assert "(nor is there a directory numgpt-test/no-such-model here)" in message
    assert "HF_TOKEN" in message and "owner/name" in message


def test_a_revision_the_repository_does_not_have(monkeypatch):
    with HubServer(hub_files()) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        with pytest.raises(DownloadError, match=f"{REPO} on .* has no revision 'v9' \\(a branch, tag or commit\\)"):
            resolve_model_dir(f"{REPO}@v9")
        with pytest.raises(ModelSourceError, match="two revisions"):
            download_model(f"{REPO}@v9", revision="main")


def test_a_gated_repository(monkeypatch):
    with HubServer(hub_files()) as server:
        server.gated.add(REPO)
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        with pytest.raises(DownloadError) as error:
            download_model(REPO)
    message = str(error.value)
    assert f"{REPO} on {server.url} is gated: accept its conditions at {server.url}/{REPO}" in message
    assert "HF_TOKEN" in message


def test_a_repository_with_pickle_weights_only(monkeypatch):
    files = {"config.json": b"{}", "pytorch_model.bin": b"\x80\x02}q\x00.", "tokenizer.json": b"{}"}
    with HubServer(hub_files(files=files)) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        with pytest.raises(WeightsError) as error:
            resolve_model_dir(REPO)
    message = str(error.value)
    print(message)
    assert f"{REPO} has no safetensors weights: the repository holds pytorch_model.bin but no model.safetensors" \
        in message
    assert "numgpt does not load pickle-based .bin/.pt/.pth files" in message
    assert not [p for _, p in paths(server) if p.endswith(".bin")]


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "unreachable"])
def test_a_model_that_is_neither_cached_nor_reachable(hf_environment, monkeypatch, sockets, how):
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with socket.socket() as s:                                          # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    sockets.attempts.clear()
    with pytest.raises(DownloadError) as error:
        resolve_model_dir(f"{REPO}@main")
    message = str(error.value)
    print(message)
    assert f"{REPO}@main is not in the Hugging Face cache ({hf_environment})" in message
    assert f"run `numgpt download {REPO}@main`" in message and "HF_HUB_CACHE" in message
    if how == "HF_HUB_OFFLINE":
        assert "HF_HUB_OFFLINE is set, so the hub was not asked" in message and sockets.attempts == []
    else:
        assert f"the hub at http://127.0.0.1:{port} could not be reached" in message


def test_without_huggingface_hub(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)           # `import huggingface_hub` fails
    with pytest.raises(DownloadError, match=r"needs huggingface_hub: pip install 'numgpt\[hub\]'"):
        resolve_model_dir(REPO)


# ---------------------------------------------------------------- directories and ids

def test_a_local_directory_needs_no_network_and_no_huggingface_hub(tmp_path, monkeypatch, sockets):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    sockets.block_all = True
    model = tmp_path / "numgpt-test" / "tiny-llama"                     # looks like a repo id, too
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    assert resolve_model_dir(model) == model
    monkeypatch.chdir(tmp_path)
    assert resolve_model_dir("numgpt-test/tiny-llama") == Path("numgpt-test/tiny-llama")     # the directory wins
    assert sockets.attempts == []

    (model / "config.json").unlink()
    (model / "pytorch_model.bin").write_bytes(b"\x80\x02")
    with pytest.raises(ModelSourceError) as error:
        resolve_model_dir(model)
    message = str(error.value)
    assert f"{model} has no config.json: expected a Hugging Face model directory" in message
    assert "It holds: pytorch_model.bin." in message and "does not load pickle-based weights" in message
    with pytest.raises(ModelSourceError, match="is a file; expected a model directory"):
        resolve_model_dir(model / "pytorch_model.bin")


@pytest.mark.parametrize("source", ["gpt2", "./no/such/dir", "/no/such/dir", "a/b/c", "owner/-name", "a--b/c", 7])
def test_a_source_that_is_neither_a_directory_nor_a_repo_id(source):
    with pytest.raises(ModelSourceError) as error:
        resolve_model_dir(source)
    assert "Hugging Face repo id" in str(error.value)


def test_repo_ids():
    assert parse_repo_id("HuggingFaceTB/SmolLM2-135M") == ("HuggingFaceTB/SmolLM2-135M", None)
    assert parse_repo_id("Qwen/Qwen2.5-0.5B-Instruct@main") == ("Qwen/Qwen2.5-0.5B-Instruct", "main")
    assert parse_repo_id("meta-llama/Llama-3.2-1B@refs/pr/7") == ("meta-llama/Llama-3.2-1B", "refs/pr/7")
    for text in ("gpt2", "a/b/c", "a/b@", "a/b@x y", ".a/b", "a./b", "a/b..c", "ö/b", "", None):
        assert parse_repo_id(text) is None, text


def test_the_patterns_fetch_weights_config_and_tokenizer_never_pickles():
    listing = ["config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
               "model-00001-of-00002.safetensors", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt",
               "original/consolidated.00.pth", "README.md", "vocab.json", "merges.txt", ".gitattributes"]
    kept = [name for name in listing if any(fnmatch.fnmatch(name, p) for p in MODEL_FILE_PATTERNS)]
    assert kept == listing[:8]


def test_importing_numgpt_hub_does_not_import_huggingface_hub():
    code = "import sys, numgpt.io.hub, numgpt.io.hf_weights; print('huggingface_hub' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_the_server_answers_the_revision_api_as_the_hub_does(monkeypatch):
    """The stand-in's JSON, read back by huggingface_hub's own client."""
    from huggingface_hub import HfApi
    with HubServer(hub_files()) as server:
        api = HfApi(endpoint=server.url, token=False)
        info = api.model_info(REPO, revision="main")
        tree = {f.path: f for f in api.list_repo_tree(REPO, recursive=True, revision=COMMIT)}
    assert info.sha == COMMIT and {s.rfilename for s in info.siblings} == set(MODEL_FILES) | set(OTHER_FILES)
    assert tree["model.safetensors"].lfs.sha256 == hashlib.sha256(MODEL_FILES["model.safetensors"]).hexdigest()
    assert tree["config.json"].lfs is None and tree["config.json"].size == len(MODEL_FILES["config.json"])
    assert json.loads(MODEL_FILES["config.json"]) == {"model_type": "llama"}
