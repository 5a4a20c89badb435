"""Builds a Hugging Face hub cache by hand, the way huggingface_hub lays one out, for tests:

    <hub cache>/models--<owner>--<name>/
        blobs/<sha256 or git sha1>          the bytes
        refs/main                           the commit main points to
        snapshots/<commit>/<file>           a relative symlink into blobs/ (or, without symlinks, the bytes)
"""
import hashlib
import os
from pathlib import Path

FILES = ("config.json", "model.safetensors")


def place_in_hf_cache(hub_cache, repo_id, source, commit="a" * 40, symlinks=True, ref=True):
    """Copy ``source``'s config.json and model.safetensors into ``hub_cache`` as a snapshot of
    ``repo_id`` at ``commit``; ``ref`` writes refs/main. Returns the snapshot directory."""
    repo = Path(hub_cache) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for filename in FILES:
        data = (Path(source) / filename).read_bytes()
        if symlinks:
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(exist_ok=True)
            blob.write_bytes(data)
            os.symlink(os.path.relpath(blob, snapshot), snapshot / filename)
        else:
            (snapshot / filename).write_bytes(data)
    if ref:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
    return snapshot
