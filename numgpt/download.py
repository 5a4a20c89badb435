"""OpenAI's GPT-2 weights from the Hugging Face hub, into a local cache.

``download_gpt2('gpt2-124m')`` fetches ``model.safetensors`` and
``config.json`` of ``openai-community/<name>`` from its ``resolve/main`` URLs
into ``<cache>/<name>/`` and returns that directory. The cache is
``cache_dir``, else ``$NUMGPT_HOME``, else ``$XDG_CACHE_HOME/numgpt``
(``~/.cache/numgpt``).

A download goes to ``<file>.part`` first and resumes from it with an HTTP
Range request (a server that ignores Range and answers 200 is handled by
starting over). A finished file is checked before it is renamed into place:

- its size, against Content-Length (and the hub's ``X-Linked-Size``);
- its sha256, against ``EXPECTED_FILES`` for ``model.safetensors`` of 124M,
  whose hash and size are pinned below; for the other sizes no published
  hash was found to pin, so the file is checked against the sha256 the hub
  sends for LFS files in ``X-Linked-ETag`` (on the redirect) or ``ETag``,
  when that header holds one. config.json (a small git file, no sha256
  header) is checked by size only.

Any network failure raises ``DownloadError`` naming the URL to fetch by hand
and the path to put the file in.
"""
import hashlib
import http.client
import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from numgpt.errors import NumgptError

HF_BASE_URL = "https://huggingface.co"

# numgpt size name -> the hub repository openai-community/<name>
HF_NAMES = {
    "gpt2-124m": "gpt2",
    "gpt2-355m": "gpt2-medium",
    "gpt2-774m": "gpt2-large",
    "gpt2-1558m": "gpt2-xl",
}

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
        if key in (hf_name, "openai-community/" + hf_name):
            return size
    return None


def default_cache_dir():
    """$NUMGPT_HOME, else $XDG_CACHE_HOME/numgpt, else ~/.cache/numgpt."""
    if os.environ.get("NUMGPT_HOME"):
        return Path(os.environ["NUMGPT_HOME"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "numgpt"


def gpt2_url(size, filename, base_url=HF_BASE_URL):
    return f"{base_url.rstrip('/')}/openai-community/{HF_NAMES[size]}/resolve/main/{filename}"


def download_gpt2(size, cache_dir=None, base_url=HF_BASE_URL, progress=True, retries=2):
    """Fetch one GPT-2 size's model.safetensors and config.json; return their directory.

    Files already in the cache are used as they are (a file only lands there
    after its checks passed). A cut connection is resumed from the ``.part``
    file up to ``retries`` times before ``DownloadError`` is raised; the next
    call resumes again.
    """
    canonical = canonical_size(size)
    if canonical is None:
        raise ValueError(f"unknown GPT-2 size {size!r}: expected one of {', '.join(HF_NAMES)} (or 124m, 355m, ...)")
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    directory = directory / HF_NAMES[canonical]
    directory.mkdir(parents=True, exist_ok=True)
    missing = [filename for filename in FILES if not (directory / filename).is_file()]
    for n, filename in enumerate(missing):
        expected_size, expected_sha256 = EXPECTED_FILES.get((canonical, filename), (None, None))
        try:
            fetch(gpt2_url(canonical, filename, base_url), directory / filename, expected_size=expected_size,
                  expected_sha256=expected_sha256, progress=progress, retries=retries)
        except DownloadError as error:
            rest = "".join(f"\n  curl -L -o '{directory / other}' '{gpt2_url(canonical, other, base_url)}'"
                           for other in missing[n + 1:])
            if rest:
                raise DownloadError(f"{error}\nand the rest of {canonical}:{rest}") from error
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


def fetch(url, dest, expected_size=None, expected_sha256=None, progress=True, retries=2):
    """Download ``url`` to ``dest`` through ``dest.part`` (resumed when present), checked, renamed atomically."""
    dest = Path(dest)
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
        with open(part, "r+b" if offset else "wb") as out:
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
