"""Model directories, from disk or from the Hugging Face hub.

``resolve_model_dir(source)`` turns what a user typed into a directory in the
Hugging Face layout (config.json, the safetensors weights, the tokenizer files):

- an existing directory is used as it is; it must hold config.json;
- ``owner/name`` or ``owner/name@revision`` (a branch, tag or commit) is a
  repository on the hub, fetched with ``download_model``.

``download_model`` calls huggingface_hub's ``snapshot_download`` for the files
in ``MODEL_FILE_PATTERNS`` only: the config, the safetensors weights and the
tokenizer, never the pickle-based ``*.bin`` / ``*.pt`` / ``*.pth`` weights that
many repositories carry beside them. The files land in the Hugging Face cache
(``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``),
where transformers keeps what it downloaded, so a model either of them fetched
is not fetched again. huggingface_hub reads ``HF_ENDPOINT`` and
``HF_HUB_OFFLINE`` once, when it is imported; numgpt reads them at each call
and passes the endpoint, the cache and the offline flag on, as
``numgpt.io.download`` does: ``HF_HUB_OFFLINE`` set after the import still keeps
numgpt off the network. (Unset after an import that saw it set, it leaves
huggingface_hub offline: the cache is used, as below.) ``HF_TOKEN`` is read by
huggingface_hub at each call.

With ``HF_HUB_OFFLINE`` set the hub is not asked: the snapshot comes from the
cache (``local_files_only=True``). When the hub cannot be reached,
``snapshot_download`` falls back to the cache by itself. Either way, a
repository the cache lacks is one ``DownloadError`` naming the repository, the
cache and how to get it there.
"""
import os
import re
from pathlib import Path

from numgpt.errors import NumgptError
from numgpt.io.download import HF_BASE_URL, DownloadError, hf_hub_cache, hf_offline
from numgpt.io.hf_weights import INDEX_FILE, PICKLE_WEIGHTS, SINGLE_FILE, WeightsError, describe_contents

MODEL_FILE_PATTERNS = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    INDEX_FILE,
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)

# owner/name[@revision]; the hub's rules for each part: letters, digits, '-', '_', '.', at most 96
# characters, not starting or ending with '-' or '.', no '--' or '..' (checked in parse_repo_id)
REPO_ID = re.compile(r"^(?P<owner>[\w.-]{1,96})/(?P<name>[\w.-]{1,96})(?:@(?P<revision>[^\s@]+))?$", re.ASCII)
INSTALL_HINT = "pip install 'numgpt[hub]'"


class ModelSourceError(NumgptError, ValueError):
    """A model source that is neither a model directory nor a Hugging Face repo id."""


def parse_repo_id(text):
    """(repo_id, revision or None) of 'owner/name' or 'owner/name@revision'; None when ``text`` is neither."""
    if not isinstance(text, str):
        return None
    match = REPO_ID.match(text.strip())
    if match is None or not all(_plausible_part(match[part]) for part in ("owner", "name")):
        return None
    return f"{match['owner']}/{match['name']}", match["revision"]


def _plausible_part(part):
    return part[0] not in "-." and part[-1] not in "-." and "--" not in part and ".." not in part


def resolve_model_dir(source, cache_dir=None):
    """The directory of the model ``source``: an existing directory (holding config.json), or
    'owner/name[@revision]' downloaded into (or found in) the Hugging Face cache ``cache_dir``
    (default: huggingface_hub's, see the module docstring). A directory of that name wins over
    the hub, as in transformers."""
    path = Path(source).expanduser() if isinstance(source, (str, os.PathLike)) else None
    if path is None:
        raise ModelSourceError(f"a model source is a directory or a Hugging Face repo id, got "
                               f"{type(source).__name__}")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"{path} has no config.json: expected a Hugging Face model directory (config.json "
                                   f"beside {SINGLE_FILE} or {INDEX_FILE} and its shards, and the tokenizer "
                                   f"files). {describe_contents(path)}")
        return path
    if path.exists():
        raise ModelSourceError(f"{path} is a file; expected a model directory holding config.json, or a Hugging "
                               "Face repo id (owner/name)")
    if isinstance(source, str) and parse_repo_id(source) is not None:
        return download_model(source, cache_dir=cache_dir)
    raise ModelSourceError(f"{str(source)!r} is neither an existing directory nor a Hugging Face repo id "
                           "(owner/name or owner/name@revision, e.g. HuggingFaceTB/SmolLM2-135M)")


def download_model(repo_id, revision=None, cache_dir=None):
    """The snapshot directory of the hub repository ``repo_id`` ('owner/name', or 'owner/name@revision')
    at ``revision`` (default: main) in the Hugging Face cache ``cache_dir``: the files of
    MODEL_FILE_PATTERNS, downloaded unless the cache holds them (see the module docstring).

    DownloadError when huggingface_hub is missing, the repository or revision does not exist or
    is gated, or the hub cannot be asked and the cache lacks the snapshot; WeightsError when the
    repository has no config.json or no safetensors weights."""
    parsed = parse_repo_id(repo_id)
    if parsed is None:
        raise ModelSourceError(f"{repo_id!r} is not a Hugging Face repo id: expected owner/name or "
                               "owner/name@revision, e.g. HuggingFaceTB/SmolLM2-135M")
    repo_id, pinned = parsed
    if pinned is not None and revision is not None and pinned != revision:
        raise ModelSourceError(f"two revisions for {repo_id}: {pinned!r} in the id and {revision!r}")
    revision = revision or pinned
    try:
        # optional: the hub extra
        from huggingface_hub import snapshot_download
    except ImportError:
        raise DownloadError(f"downloading {repo_id} from the Hugging Face hub needs huggingface_hub: "
                            f"{INSTALL_HINT}; or download the model directory yourself and pass its path") from None
    cache = Path(cache_dir).expanduser() if cache_dir is not None else hf_hub_cache()
    endpoint = (os.environ.get("HF_ENDPOINT") or HF_BASE_URL).rstrip("/")
    try:
        snapshot = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache, endpoint=endpoint,
                                          allow_patterns=list(MODEL_FILE_PATTERNS), local_files_only=hf_offline()))
    except OSError as error:                                # every huggingface_hub error is one
        raise _hub_error(error, repo_id, revision, cache, endpoint) from error
    _check_snapshot(snapshot, repo_id, revision, cache)
    return snapshot


def _hub_error(error, repo_id, revision, cache, endpoint):
    """One DownloadError for a huggingface_hub error: what happened and what to do."""
    # optional: the hub extra
    from huggingface_hub.utils import (GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                       RevisionNotFoundError)
    try:
        from huggingface_hub.errors import IncompleteSnapshotError     # a snapshot interrupted before all its files
    except ImportError:                                                 # huggingface_hub before it
        IncompleteSnapshotError = ()

    name = repo_id + (f"@{revision}" if revision else "")
    not_here = "" if Path(repo_id).exists() else f" (nor is there a directory {repo_id} here)"
    if isinstance(error, GatedRepoError):                   # a kind of RepositoryNotFoundError: first
        what = (f"{repo_id} on {endpoint} is gated: accept its conditions at {endpoint}/{repo_id} while logged in, "
                "then set HF_TOKEN to a token of that account (or run `hf auth login`)")
    elif isinstance(error, RepositoryNotFoundError):
        what = (f"{endpoint} has no repository {repo_id} that you may read{not_here}: check the id (owner/name); "
                "for a private repository set HF_TOKEN")
    elif isinstance(error, RevisionNotFoundError):
        what = f"{repo_id} on {endpoint} has no revision {revision!r} (a branch, tag or commit)"
    elif isinstance(error, LocalEntryNotFoundError):        # the hub was not asked or did not answer
        why = ("HF_HUB_OFFLINE is set, so the hub was not asked" if hf_offline() else
               f"the hub at {endpoint} could not be reached ({_one_line(error.__cause__ or error)})")
        incomplete = isinstance(error, IncompleteSnapshotError)
        what = (f"{name} is {'only partly' if incomplete else 'not'} in the Hugging Face cache ({cache}){not_here}, "
                f"and {why}. To get it: run `numgpt download {name}` where the hub can be reached "
                f"({'unset HF_HUB_OFFLINE' if hf_offline() else 'check HF_ENDPOINT and the network'}), or point "
                "HF_HOME / HF_HUB_CACHE at a cache that holds it, or pass the path of a model directory")
    else:
        what = f"downloading {name} from {endpoint} failed: {_one_line(error)}"
    return DownloadError(what)


def _one_line(error):
    return " ".join(str(error).split()) or type(error).__name__


def _check_snapshot(snapshot, repo_id, revision, cache):
    """WeightsError unless the snapshot holds config.json and safetensors weights."""
    name = repo_id + (f"@{revision}" if revision else "")
    if not (snapshot / "config.json").is_file():
        raise WeightsError(f"{name} has no config.json ({snapshot}): numgpt loads transformers model "
                           "repositories (config.json beside safetensors weights)")
    if not ((snapshot / SINGLE_FILE).is_file() or (snapshot / INDEX_FILE).is_file()):
        pickles = [path for path in _listed_files(repo_id, revision, cache) if PICKLE_WEIGHTS.match(Path(path).name)]
        held = f"the repository holds {', '.join(pickles)} but" if pickles else "the repository has"
        raise WeightsError(f"{name} has no safetensors weights: {held} no {SINGLE_FILE} or {INDEX_FILE}. numgpt "
                           "does not load pickle-based .bin/.pt/.pth files (unpickling can run arbitrary code): "
                           "use a repository that publishes safetensors (often a branch or a sibling repository "
                           "of the same model), or convert the weights to safetensors where you trust them")


def _listed_files(repo_id, revision, cache):
    """The repository's files as huggingface_hub last listed them (its tree cache, no network); [] when unknown."""
    try:
        # optional: the hub extra
        from huggingface_hub import get_cached_repo_tree
        from huggingface_hub.errors import CachedRepoTreeNotFoundError
    except ImportError:                                     # huggingface_hub before its tree cache
        return []
    try:
        return [entry.path for entry in get_cached_repo_tree(repo_id, revision=revision, cache_dir=cache)]
    except CachedRepoTreeNotFoundError:
        return []
