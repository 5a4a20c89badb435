"""Where numgpt keeps the files it writes for later (GPT-2 downloads, the matmul choices):
$NUMGPT_HOME, else $XDG_CACHE_HOME/numgpt, else ~/.cache/numgpt."""
import os
from pathlib import Path


def default_cache_dir():
    """$NUMGPT_HOME, else $XDG_CACHE_HOME/numgpt, else ~/.cache/numgpt."""
    if os.environ.get("NUMGPT_HOME"):
        return Path(os.environ["NUMGPT_HOME"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "numgpt"
