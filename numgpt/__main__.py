"""``python -m numgpt``: the numgpt command."""
import sys

from numgpt.cli import main

sys.exit(main())
