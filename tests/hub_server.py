"""A stand-in for the Hugging Face hub on 127.0.0.1, for tests of the huggingface_hub download path.

huggingface_hub's ``hf_hub_download`` first sends HEAD to
``{endpoint}/{repo_id}/resolve/{revision}/{filename}`` and needs from the answer
(see ``get_hf_file_metadata`` and ``_get_metadata_or_catch_error`` in its
file_download.py):

- ``X-Repo-Commit``: the commit the revision resolves to (it names the snapshot folder);
- ``X-Linked-Etag`` or ``ETag``: the blob's name in the cache. The hub sends the
  sha256 for LFS files (``X-Linked-Etag``, with ``X-Linked-Size``) and git's blob
  sha1 for small files;
- ``Content-Length`` (or ``X-Linked-Size``): the size it checks the download against.

Then it sends GET to the same URL (no redirect here: the hub redirects LFS files to
a CDN on another host, and a loopback server has only one). Errors carry
``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``,
``GatedRepo``), which huggingface_hub turns into its RepositoryNotFoundError,
RevisionNotFoundError, RemoteEntryNotFoundError and GatedRepoError.

``snapshot_download`` (huggingface_hub 2.x, see its _snapshot_download.py and
``HfApi.repo_info`` / ``list_repo_tree`` in hf_api.py) asks two API routes before it
fetches each file as above, pinned to the commit:

- ``GET {endpoint}/api/models/{repo_id}/revision/{revision}`` (the revision
  URL-quoted): JSON with ``id``, ``sha`` (the commit) and ``siblings``
  (``[{"rfilename": ...}]``);
- ``GET {endpoint}/api/models/{repo_id}/tree/{commit}?recursive=True&expand=False``:
  a JSON list of ``{"type": "file", "path", "size", "oid"}`` (plus ``"lfs":
  {"oid": sha256, "size", "pointerSize"}`` for LFS files), one page (no ``Link``
  header: nothing follows).
"""
import hashlib
import http.server
import json
import re
import threading
import urllib.parse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def git_blob_sha1(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self._answer(send_body=False)

    def do_GET(self):
        self._answer(send_body=True)

    def _answer(self, send_body):
        hub = self.server.hub
        hub.requests.append((self.command, self.path, self.headers.get("Authorization")))
        path = self.path.partition("?")[0]
        api = re.fullmatch(r"/api/models/(.+)/(revision|tree)/([^/]+)", path)
        match = api or re.fullmatch(r"/(.+)/resolve/([^/]+)/([^/]+)", path)
        if match is None:
            return self._error("RepoNotFound")
        if api:
            repo_id, route, revision = api.groups()
        else:
            (repo_id, revision, filename), route = match.groups(), "resolve"
        revision = urllib.parse.unquote(revision)
        if not any(repo == repo_id for repo, _ in hub.files):
            return self._error("RepoNotFound")
        if repo_id in hub.gated:
            return self._error("GatedRepo", status=401)
        if revision not in ("main", hub.commit):
            return self._error("RevisionNotFound")
        if route == "revision":
            return self._json({"id": repo_id, "sha": hub.commit,
                               "siblings": [{"rfilename": name} for repo, name in hub.files if repo == repo_id]},
                              send_body)
        if route == "tree":
            return self._json([_tree_entry(name, data) for (repo, name), data in hub.files.items() if repo == repo_id],
                              send_body)
        if (repo_id, filename) not in hub.files:
            return self._error("EntryNotFound")
        data = hub.files[repo_id, filename]
        self.send_response(200)
        self.send_header("X-Repo-Commit", hub.commit)
        if _is_lfs(filename):                                  # an LFS file: named by its sha256
            sha256 = hub.announced_sha256.get(filename) or hashlib.sha256(data).hexdigest()
            self.send_header("ETag", f'"{sha256}"')
            self.send_header("X-Linked-Etag", f'"{sha256}"')
            self.send_header("X-Linked-Size", str(len(data)))
        else:                                                  # a small git file: named by its git sha1
            self.send_header("ETag", f'"{git_blob_sha1(data)}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if send_body:
            self.wfile.write(data)

    def _json(self, value, send_body):
        data = json.dumps(value).encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if send_body:
            self.wfile.write(data)

    def _error(self, code, status=404):
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("Content-Length", "0")
        self.end_headers()


def _is_lfs(filename):
    """The hub keeps weights in LFS; small text files in git."""
    return filename.endswith((".safetensors", ".bin", ".pt", ".pth"))


def _tree_entry(filename, data):
    """One file of the tree listing, as the hub's /api/models/{repo_id}/tree/{revision} lists it."""
    entry = {"type": "file", "path": filename, "size": len(data), "oid": git_blob_sha1(data)}
    if _is_lfs(filename):
        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
    return entry


class HubServer:
    """``with HubServer({(repo_id, filename): bytes}) as hub:`` serves those files at ``hub.url``
    until the block ends; ``hub.requests`` logs (method, path with its query, Authorization header);
    ``hub.announced_sha256[filename]`` makes it announce another sha256 than the bytes';
    a repo id added to ``hub.gated`` answers 401 GatedRepo."""

    def __init__(self, files, commit=COMMIT):
        self.files, self.commit = dict(files), commit
        self.requests, self.announced_sha256, self.gated = [], {}, set()

    def __enter__(self):
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.hub = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
