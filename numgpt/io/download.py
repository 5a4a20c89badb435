"""OpenAI's GPT-2 weights: found where they already are, else downloaded.

``download_gpt2('gpt2-124m')`` returns a directory holding ``config.json`` and
``model.safetensors`` of one GPT-2 size. It looks, in this order:

1. In the Hugging Face hub cache, where transformers and huggingface_hub keep
   what they downloaded: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
   ``$XDG_CACHE_HOME/huggingface/hub`` (``~/.cache/huggingface/hub``). A model
   there is ``models--<owner>--<name>/``, with ``refs/main`` holding a commit
   hash and ``snapshots/<hash>/`` holding the files (symlinks into ``blobs/`` in
   a real cache; plain files do as well). Each size is looked for under its
   current id (``openai-community/gpt2``) and its older one (``gpt2``): first
   the snapshot ``refs/main`` names, then any snapshot that holds both files,
   the newest first. numgpt reads this layout itself, so a lookup needs no
   huggingface_hub.
2. In numgpt's own cache, ``<cache>/<name>/``: ``cache_dir``, else
   ``$NUMGPT_HOME``, else ``$XDG_CACHE_HOME/numgpt`` (``~/.cache/numgpt``).
3. On the hub. When huggingface_hub is installed (``pip install numgpt[hub]``),
   through its ``hf_hub_download`` into the Hugging Face cache: it honours
   ``HF_ENDPOINT`` (a mirror), ``HF_TOKEN`` and ``HF_HUB_OFFLINE`` and locks each
   file against a second process. It reads those variables once, when it is
   imported, so numgpt passes the endpoint, the cache and the offline flag it
   reads itself at the call; the two never disagree. Its errors become one
   ``DownloadError`` naming the repository, the file and what to do. Without
   huggingface_hub, numgpt's own urllib path (below) fetches into numgpt's
   cache; it honours ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` too.

Either way a downloaded ``model.safetensors`` is checked before it is used:
its sha256 against ``EXPECTED_FILES`` (pinned for 124M below; for the other
sizes no published hash was found to pin) or else against the sha256 the hub
announces for LFS files (``X-Linked-ETag``, or ``ETag``), when it announces one.
huggingface_hub itself checks sizes only, so numgpt hashes its download once.

The urllib path downloads to ``<file>.part`` first and resumes from it with an
HTTP Range request (a server that ignores Range and answers 200 is handled by
starting over). A finished file is checked before it is renamed into place: its
size against Content-Length (and the hub's ``X-Linked-Size``) and its sha256 as
above; config.json (a small git file, no sha256 header) by size only. Two
processes fetching the same file take turns: each holds an exclusive
``flock`` on ``<file>.lock`` while it fetches, and the second, once it has the
lock, finds the first one's finished, checked file and uses it. Any network
failure raises ``DownloadError`` naming the URL to fetch by hand and the path
to put the file in.
"""
import contextlib
import fcntl
import hashlib
import http.client
import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from numgpt.cache import default_cache_dir     # numgpt.io.download.default_cache_dir, as before
from numgpt.errors import NumgptError, UsageError
from numgpt.safe_write import open_existing_or_new, refuse_link

HF_BASE_URL = "https://huggingface.co"

# numgpt size name -> the hub repository openai-community/<name> (once just <name>)
HF_NAMES = {
    "gpt2-124m": "gpt2",
    "gpt2-355m": "gpt2-medium",
    "gpt2-774m": "gpt2-large",
    "gpt2-1558m": "gpt2-xl",
}
HF_OWNER = "openai-community"

FILES = ("config.json", "model.safetensors")

# Pinned (size in bytes, sha256) of hub files, where a published value could be
# confirmed: openai-community/gpt2 model.safetensors (LFS pointer oid).
EXPECTED_FILES = {
    ("gpt2-124m", "model.safetensors"): (548105171,
                                         "248dfc3911869ec493c76e65bf2fcf7f615828b0254c12b473182f0f81d3a707"),
}

CHUNK = 1 << 20
TIMEOUT = 60.0
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


class DownloadError(NumgptError, OSError):
    """A file could not be fetched or failed its check; the message says what to do by hand."""


def canonical_size(name):
    """'gpt2-124m' for 'gpt2-124m', '124m', '124M', 'gpt2' or 'gpt2-medium' ...; None if ``name`` is no size."""
    if not isinstance(name, str):
        return None
    key = name.strip().lower()
    if key in HF_NAMES:
        return key
    if "gpt2-" + key in HF_NAMES:
        return "gpt2-" + key
    for size, hf_name in HF_NAMES.items():
        if key in (hf_name, f"{HF_OWNER}/{hf_name}"):
            return size
    return None


def hf_hub_cache():
    """$HF_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(home).expanduser() / "hub"


def hf_offline():
    """True when $HF_HUB_OFFLINE is set to 1, true, yes or on (as huggingface_hub reads it)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "TRUE", "YES", "ON")


def hf_repo_ids(size):
    """The hub ids of a canonical size: the current one first, then the id transformers used before."""
    return f"{HF_OWNER}/{HF_NAMES[size]}", HF_NAMES[size]


def find_in_hf_cache(size, hub_cache=None):
    """The snapshot directory in the Hugging Face hub cache that holds both FILES of a
    canonical ``size``, or None (see the module docstring for the order)."""
    hub_cache = Path(hub_cache) if hub_cache is not None else hf_hub_cache()
    for repo_id in hf_repo_ids(size):
        repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
        snapshots = repo / "snapshots"
        if not snapshots.is_dir():
            continue
        candidates = sorted(snapshots.iterdir(), key=lambda path: path.lstat().st_mtime, reverse=True)
        with contextlib.suppress(OSError):
            commit = (repo / "refs" / "main").read_text().strip()
            if _COMMIT.match(commit):               # a hash, never a path of its own
                candidates.insert(0, snapshots / commit)
        for snapshot in candidates:
            if all((snapshot / filename).is_file() for filename in FILES):    # follows the symlinks into blobs/
                return snapshot
    return None


def gpt2_url(size, filename, base_url=HF_BASE_URL):
    return f"{base_url.rstrip('/')}/{HF_OWNER}/{HF_NAMES[size]}/resolve/main/{filename}"


def _hub_importable():
    """Whether ``import huggingface_hub`` works (the import itself waits until a download)."""
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        return False
    return True


def download_gpt2(size, cache_dir=None, base_url=None, progress=True, retries=2, hub=None):
    """The directory holding one GPT-2 size's config.json and model.safetensors: found in
    the Hugging Face cache or numgpt's cache, else downloaded (see the module docstring).

    ``base_url`` is the hub's address (default ``$HF_ENDPOINT``, else huggingface.co).
    ``hub`` picks the download path: huggingface_hub (True), numgpt's urllib path
    (False) or the first when it is installed (None). ``progress`` and ``retries``
    are the urllib path's (huggingface_hub draws its own progress bars, hidden by
    ``HF_HUB_DISABLE_PROGRESS_BARS=1``, and retries by itself). Files already in a
    cache are used as they are: a file only lands in numgpt's cache after its
    checks passed. On the urllib path a cut connection is resumed from the
    ``.part`` file up to ``retries`` times before ``DownloadError`` is raised;
    the next call resumes again.
    """
    canonical = canonical_size(size)
    if canonical is None:
        raise UsageError(f"unknown GPT-2 size {size!r}: expected one of {', '.join(HF_NAMES)} (or 124m, 355m, ...)")
    found = find_in_hf_cache(canonical)
    if found is not None:
        return found
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    directory = directory / HF_NAMES[canonical]
    if all((directory / filename).is_file() for filename in FILES):
        return directory
    base_url = base_url or os.environ.get("HF_ENDPOINT") or HF_BASE_URL
    if _hub_importable() if hub is None else hub:
        return _hub_download(canonical, base_url, directory)
    return _urllib_download(canonical, directory, base_url, progress, retries)


# ---------------------------------------------------------------- through huggingface_hub

def _hub_download(size, base_url, by_hand_directory):
    """Both FILES through huggingface_hub into the Hugging Face cache; their snapshot directory."""
    # optional: the hub extra
    from huggingface_hub import hf_hub_download

    repo_id, revision, path = hf_repo_ids(size)[0], None, None
    for n, filename in enumerate(FILES):
        try:
            path = Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=hf_hub_cache(),
                                        endpoint=base_url, local_files_only=hf_offline()))
        except OSError as error:                    # every huggingface_hub error is one
            raise _hub_error(error, size, repo_id, FILES[n:], base_url, by_hand_directory) from error
        revision = path.parent.name                 # the commit: the second file comes from the same snapshot
        if filename == "model.safetensors":
            _check_hub_blob(path, size, filename, repo_id)
    return path.parent


def _hub_error(error, size, repo_id, missing, base_url, by_hand_directory):
    """One DownloadError for a huggingface_hub error on ``missing[0]``: what happened and what to do."""
    # optional: the hub extra
    from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    filename = missing[0]
    if isinstance(error, LocalEntryNotFoundError):             # no answer (its cause says why), or offline
        cause = f": {' '.join(str(error.__cause__).split())}" if error.__cause__ else ""
        what = (f"HF_HUB_OFFLINE is set and GPT-2 {size} is neither in the Hugging Face cache ({hf_hub_cache()}) "
                f"nor in {by_hand_directory}: unset HF_HUB_OFFLINE to download it"
                if hf_offline() else f"no answer from {base_url} as from the hub{cause} (are you offline? "
                                     "is HF_ENDPOINT right?)")
    elif isinstance(error, RepositoryNotFoundError):
        what = f"{base_url} has no repository {repo_id} that you may read (check HF_ENDPOINT and HF_TOKEN)"
    elif isinstance(error, EntryNotFoundError):
        what = f"{repo_id} on {base_url} has no file {filename}"
    else:
        what = " ".join(str(error).split()) or type(error).__name__
    return DownloadError(f"could not download {filename} of {repo_id} through huggingface_hub: {what}; or "
                         + " and ".join(_by_hand(gpt2_url(size, f, base_url), by_hand_directory / f) for f in missing))


def _check_hub_blob(path, size, filename, repo_id):
    """Hash a file huggingface_hub downloaded against the pinned sha256 or, without one, the
    sha256 its blob is named by (the hub's ETag for LFS files); a corrupt file is removed."""
    blob = path.resolve()
    expected_size, expected = EXPECTED_FILES.get((size, filename), (None, None))
    expected = expected or (blob.name if _SHA256.match(blob.name) else None)
    if expected is None:
        return
    digest = hashlib.sha256()
    with open(blob, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    actual_size = blob.stat().st_size
    if digest.hexdigest() != expected or expected_size not in (None, actual_size):
        for stale in {path, blob}:
            stale.unlink(missing_ok=True)
        raise DownloadError(f"{filename} of {repo_id} downloaded through huggingface_hub is corrupt ({actual_size} "
                            f"bytes, sha256 {digest.hexdigest()}, but expected sha256 {expected}"
                            + (f" and {expected_size} bytes" if expected_size else "") + f"); {blob} was deleted. "
                            "Try again.")


# ---------------------------------------------------------------- through urllib

def _urllib_download(size, directory, base_url, progress, retries):
    """Both FILES through numgpt's urllib path into ``directory``; the directory."""
    missing = [filename for filename in FILES if not (directory / filename).is_file()]
    if hf_offline():
        raise DownloadError(f"HF_HUB_OFFLINE is set and GPT-2 {size} is neither in the Hugging Face cache "
                            f"({hf_hub_cache()}) nor in {directory}: unset HF_HUB_OFFLINE to download it, or "
                            + " and ".join(_by_hand(gpt2_url(size, f, base_url), directory / f) for f in missing))
    directory.mkdir(parents=True, exist_ok=True)
    for n, filename in enumerate(missing):
        expected_size, expected_sha256 = EXPECTED_FILES.get((size, filename), (None, None))
        try:
            fetch(gpt2_url(size, filename, base_url), directory / filename, expected_size=expected_size,
                  expected_sha256=expected_sha256, progress=progress, retries=retries)
        except DownloadError as error:
            rest = "".join(f"\n  curl -L -o '{directory / other}' '{gpt2_url(size, other, base_url)}'"
                           for other in missing[n + 1:])
            if rest:
                raise DownloadError(f"{error}\nand the rest of {size}:{rest}") from error
            raise
    return directory


class _RecordingRedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows redirects as urllib does, keeping each hop's headers (the hub puts
    X-Linked-ETag and X-Linked-Size on the redirect, not on the CDN's answer)."""

    def __init__(self):
        self.hops = []

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.hops.append(headers)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _header_sha256(headers):
    """The sha256 in an X-Linked-ETag or ETag header, or None when it holds something else."""
    for name in ("X-Linked-ETag", "ETag"):
        value = headers.get(name)
        if value:
            value = value.strip()
            value = value[2:] if value.startswith("W/") else value
            value = value.strip('"').lower()
            if _SHA256.match(value):
                return value
    return None


def _by_hand(url, dest):
    return f"fetch it by hand and put it at {dest}:\n  curl -L -o '{dest}' '{url}'"


@contextlib.contextmanager
def _exclusive(lock_path):
    """Hold an exclusive flock on ``lock_path`` (created for the purpose, deleted on release).

    A process that opened the file while another held it may get the lock only after
    the holder deleted the file, when a third process may already hold a new file of
    the same name: so a lock counts only while the path still names the locked file.
    """
    while True:
        fd = open_existing_or_new(lock_path, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)              # waits for the holder
        try:
            current = os.stat(lock_path)
            locked = os.fstat(fd)
            if (current.st_dev, current.st_ino) == (locked.st_dev, locked.st_ino):
                break
        except FileNotFoundError:
            pass
        os.close(fd)                                # deleted by its holder meanwhile: take the lock anew
    try:
        yield
    finally:
        os.unlink(lock_path)                        # still holding the lock, so no one else is inside
        os.close(fd)


def fetch(url, dest, expected_size=None, expected_sha256=None, progress=True, retries=2):
    """Download ``url`` to ``dest`` through ``dest.part`` (resumed when present), checked, renamed
    atomically; one process at a time, and a process that waited for another uses its file."""
    dest = Path(dest)
    with _exclusive(dest.with_name(dest.name + ".lock")):
        if dest.is_file():                          # fetched by the process we waited for
            return dest
        for attempt in range(retries + 1):
            try:
                _fetch_once(url, dest, expected_size, expected_sha256, progress)
                return dest
            except _Interrupted as error:
                if attempt == retries:
                    kept = f"the partial file {error.part} is kept and the next call resumes it, or " \
                        if error.part.exists() else ""
                    raise DownloadError(f"download of {url} was cut off ({error}) after {attempt + 1} attempts; "
                                        + kept + _by_hand(url, dest)) from error.__cause__


class _Interrupted(Exception):
    def __init__(self, message, part):
        super().__init__(message)
        self.part = part


def _fetch_once(url, dest, expected_size, expected_sha256, progress):
    part = dest.with_name(dest.name + ".part")
    refuse_link(part)                               # neither resumed from nor written through a link
    offset = part.stat().st_size if part.is_file() else 0
    if expected_size is not None and offset > expected_size:
        part.unlink()
        offset = 0
    redirects = _RecordingRedirectHandler()
    opener = urllib.request.build_opener(redirects)
    request = urllib.request.Request(url, headers={"User-Agent": "numgpt", "Accept-Encoding": "identity"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = opener.open(request, timeout=TIMEOUT)
    except urllib.error.HTTPError as error:
        error.close()
        if error.code == 416 and offset:       # the .part file is already whole (or bigger than the file)
            part.unlink()
            raise _Interrupted("the server refused to resume; starting over", part) from error
        raise DownloadError(f"{url} answered HTTP {error.code} {error.reason}; " + _by_hand(url, dest)) from error
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DownloadError(f"could not reach {url} ({reason}); are you offline? " + _by_hand(url, dest)) from error
    with response:
        headers_seen = redirects.hops + [response.headers]
        status = response.status
        if status == 206:
            match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                part.unlink()
                raise _Interrupted(f"bad Content-Range {response.headers.get('Content-Range')!r}", part)
        else:                                   # 200: the server sends the whole file, ignoring Range
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        linked_size = next((int(h["X-Linked-Size"]) for h in headers_seen if h.get("X-Linked-Size")), None)
        header_sha256 = next((s for s in map(_header_sha256, headers_seen) if s), None)

        digest = hashlib.sha256()
        with os.fdopen(open_existing_or_new(part, os.O_RDWR | (0 if offset else os.O_TRUNC)), "r+b") as out:
            if offset:                          # hash what is already there
                while chunk := out.read(CHUNK):
                    digest.update(chunk)
                out.seek(offset)
                out.truncate()
            written = offset
            bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                       disable=not (progress and sys.stderr.isatty()))
            try:
                while True:
                    try:
                        chunk = response.read(CHUNK)
                    except (OSError, http.client.HTTPException) as error:
                        raise _Interrupted(f"{written} bytes of {total or '?'} received: {error}", part) from error
                    if not chunk:
                        break
                    out.write(chunk)
                    digest.update(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
            finally:
                bar.close()
            out.flush()
            os.fsync(out.fileno())
    if total is not None and written < total:
        raise _Interrupted(f"{written} bytes of {total} received", part)
    _check(url, dest, part, written, digest.hexdigest(),
           sizes={"Content-Length": total, "X-Linked-Size": linked_size, "expected": expected_size},
           sha256s={"expected": expected_sha256, "ETag header": header_sha256})
    os.replace(part, dest)


def _check(url, dest, part, written, sha256, sizes, sha256s):
    problems = [f"size {written} bytes, but {source} says {size}"
                for source, size in sizes.items() if size is not None and size != written]
    for source, expected in sha256s.items():
        if expected is not None:
            problems += [] if sha256 == expected else [f"sha256 {sha256}, but the {source} sha256 is {expected}"]
            break                               # the pinned hash, when there is one, decides
    if problems:
        part.unlink()
        raise DownloadError(f"the file downloaded from {url} is corrupt ({'; '.join(problems)}); it was deleted. "
                            "Try again, or " + _by_hand(url, dest))
