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
``X-Error-Code`` (``RepoNotFound``, ``EntryNotFound``), which huggingface_hub turns
into its RepositoryNotFoundError and RemoteEntryNotFoundError.
"""
import hashlib
import http.server
import re
import threading

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
        match = re.fullmatch(r"/(.+)/resolve/([^/]+)/([^/]+)", self.path)
        repo_id, revision, filename = match.groups() if match else (None, None, None)
        if not any(repo == repo_id for repo, _ in hub.files) or revision not in ("main", hub.commit):
            return self._error("RepoNotFound")
        if (repo_id, filename) not in hub.files:
            return self._error("EntryNotFound")
        data = hub.files[repo_id, filename]
        self.send_response(200)
        self.send_header("X-Repo-Commit", hub.commit)
        if filename.endswith(".safetensors"):                  # an LFS file: named by its sha256
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

    def _error(self, code):
        self.send_response(404)
        self.send_header("X-Error-Code", code)
        self.send_header("Content-Length", "0")
        self.end_headers()


class HubServer:
    """``with HubServer({(repo_id, filename): bytes}) as hub:`` serves those files at ``hub.url``
    until the block ends; ``hub.requests`` logs (method, path, Authorization header);
    ``hub.announced_sha256[filename]`` makes it announce another sha256 than the bytes'."""

    def __init__(self, files, commit=COMMIT):
        self.files, self.commit = dict(files), commit
        self.requests, self.announced_sha256 = [], {}

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
