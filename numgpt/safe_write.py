"""Writing only where numgpt means to write: never through a symbolic link.

A run directory may come from someone else (a run handed over to be resumed or
plotted), as may a checkpoint or an export directory. A symbolic link planted
where numgpt writes (``RUN/.lock`` to ``~/.bashrc``, ``RUN/checkpoints`` to
another directory) would send numgpt's bytes to its target. So every file and
directory numgpt writes goes through this module:

- A file written whole (settings, metrics, losses, plots, safetensors, JSON):
  ``atomic_write`` creates a temporary file of a new random name beside it with
  ``O_CREAT | O_EXCL | O_NOFOLLOW`` (never an existing file, never a link),
  writes it, fsyncs it and renames it over the target, then fsyncs the
  directory: a reader sees the old file or the whole new one.
- A file kept open or appended to (the run's lock, metrics.jsonl):
  ``open_existing_or_new`` opens it with ``O_NOFOLLOW`` and checks that it is
  a regular file with a single name (a hard link would reach a file elsewhere
  just as a symbolic one does).
- A directory numgpt creates or reuses (``RUN/checkpoints``, ``RUN/tokenizer``):
  ``own_directory`` checks it with ``lstat``.

A link where numgpt would write is refused with ``LinkRefused``, naming the
link and its target; nothing is written. (A rename would replace the link
rather than follow it, but a link there is the mark of a hostile directory.)
The path a user types (``--out RUN``, ``--output plot.pdf``) is taken as typed:
only its last component is checked, and its parents are followed as the
system follows them. An ``lstat`` check of a directory holds while no other
process swaps the directory for a link in between; the files themselves are
opened with ``O_NOFOLLOW``, which leaves no such window.
"""
import contextlib
import os
import re
import secrets
import shutil
import stat
from pathlib import Path

from numgpt.errors import NumgptError

NEW_FILE_MODE = 0o644
TEMPORARY_SUFFIX = ".tmp"
TEMPORARY_TOKEN_BYTES = 6
# atomic_write's temporaries: ".<name>.<12 hex digits>.tmp"
TEMPORARY_NAME = re.compile(rf"^\..+\.[0-9a-f]{{{2 * TEMPORARY_TOKEN_BYTES}}}{re.escape(TEMPORARY_SUFFIX)}$")


class LinkRefused(NumgptError, OSError):
    """A symbolic link, a second name of a file, or something other than a file or directory,
    where numgpt writes."""


def _link_words(path):
    try:
        return f"a symbolic link (to {os.readlink(path)})"
    except OSError:
        return "a symbolic link"


def refuse_link(path):
    """LinkRefused when ``path`` is a symbolic link (a path that does not exist is fine: the
    writer creates it, or reports why it cannot)."""
    try:
        info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    if stat.S_ISLNK(info.st_mode):
        raise LinkRefused(f"refusing to write {path}: it is {_link_words(path)}; numgpt writes nothing through "
                          f"or over a link (remove it, or choose another directory)")


def own_directory(path):
    """``path`` as a directory numgpt writes in, created when missing (its parents as
    ``os.makedirs`` makes them); LinkRefused when it is a link or not a directory."""
    path = Path(path)
    refuse_link(path)
    if not os.path.lexists(path):
        os.makedirs(path.parent, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path)                      # mkdir never follows a link planted meanwhile
        refuse_link(path)
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        raise LinkRefused(f"refusing to write in {path}: it is not a directory")
    return path


def _check_regular(fd, path):
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise LinkRefused(f"refusing to write {path}: it is not a regular file")
    if info.st_nlink != 1:
        raise LinkRefused(f"refusing to write {path}: the file has {info.st_nlink} names (hard links); numgpt "
                          f"writes only a file that has one")


def _open(path, flags):
    """os.open with O_NOFOLLOW | O_CLOEXEC, a link at ``path`` reported as LinkRefused."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, NEW_FILE_MODE)
    except OSError:
        if os.path.islink(path):                # ELOOP on Linux, EMLINK on FreeBSD
            refuse_link(path)
        raise


def open_existing_or_new(path, flags):
    """A file descriptor of the regular file ``path`` opened with ``flags`` (created when missing,
    never through a link; LinkRefused for a link, a second name or a non-file)."""
    fd = _open(path, flags | os.O_CREAT | os.O_NONBLOCK)   # O_NONBLOCK: a FIFO there cannot hang the open
    try:
        _check_regular(fd, path)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_new_file(path, data):
    """Create ``path`` (it must not exist: O_EXCL, no link followed), write ``data``, fsync."""
    fd = _open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def fsync_path(path):
    """fsync a file or directory by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, write):
    """Write ``path`` through ``write(fh)`` (a binary file object) on a new temporary file in
    the same directory, flushed and fsynced, renamed over ``path``, the directory fsynced:
    a reader sees the old file or the whole new one, never a part. LinkRefused when ``path``
    is a symbolic link."""
    path = Path(path)
    refuse_link(path)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(TEMPORARY_TOKEN_BYTES)}{TEMPORARY_SUFFIX}")
    fd = _open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        refuse_link(path)                       # planted while the file was written
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def remove_stale_temporaries(directory):
    """Remove what an atomic_write killed part-way left in ``directory`` (its temporaries, by their
    name pattern; the entries themselves, no link followed), before a job that owns the directory
    resumes in it; returns the names removed."""
    removed = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if TEMPORARY_NAME.match(entry.name) and not entry.is_dir(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(entry.name)
    return sorted(removed)


def copy_file(source, target):
    """Copy the file ``source`` to ``target`` atomically (see atomic_write)."""
    with open(source, "rb") as src:
        atomic_write(target, lambda fh: shutil.copyfileobj(src, fh))
