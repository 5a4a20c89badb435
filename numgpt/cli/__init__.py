"""The ``numgpt`` command (console script ``numgpt = numgpt.cli:main``, and ``python -m numgpt``):
parser.py assembles the parser and runs ``main``; one module per subcommand (train.py with
train_data.py, plot.py, generate.py, eval.py, gradcheck.py, download.py, export.py, prepare.py,
info.py), each with its ``add_parser`` and ``cmd_*``; common.py the exit statuses and flags they
share, arguments.py the flags' types and checks, quiet.py other libraries kept off stderr."""
from numgpt.cli.common import load_function
from numgpt.cli.parser import main

__all__ = ["load_function", "main"]
