"""The ``numgpt`` command: its parser, assembled from one module per subcommand (each with
its ``add_parser`` and ``cmd_*``: train, plot, generate, eval, gradcheck, download, export,
convert, prepare, info; their shared flags and exit statuses in numgpt.cli.common), and ``main``.

Bad input (any ``NumgptError``) ends with exit status 2 and one line on
stderr; any other exception is a bug and shows its traceback (exit 1).
``NUMGPT_DEBUG=1`` shows the traceback of bad input too. Every argument is
checked before the subcommand does any work (numgpt.cli.arguments: the flags'
types and a check per subcommand), and other libraries' log lines, warnings
and progress bars stay off stderr (numgpt.cli.quiet) unless ``NUMGPT_DEBUG=1``. An interrupted
training run (SIGINT, SIGTERM) finishes its step, saves a committed
checkpoint and exits 130 or 143 (numgpt.cli.train).
"""
import os
import signal
import sys
import time
import traceback

from numgpt import __version__ as numgpt_version
from numgpt.cli import convert, download, eval as eval_command, export, generate, gradcheck, info, plot, prepare, train
from numgpt.cli.common import EXIT_FAILURE, EXIT_SIGNAL, EXIT_USAGE, OneLineParser
from numgpt.cli.quiet import debugging, third_parties_quiet
from numgpt.errors import NumgptError
from numgpt.training import distributed

# the subcommands, in the order of numgpt --help
COMMANDS = (train, plot, generate, eval_command, gradcheck, download, export, convert, prepare, info)


def build_parser():
    parser = OneLineParser(prog="numgpt", description="GPT pretraining in pure NumPy.")
    parser.add_argument("--version", action="version", version=f"numgpt {numgpt_version}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv=None):
    try:
        try:
            return _main(argv)
        finally:
            sys.stdout.flush()                              # a closed pipe shows here, inside the try
    except BrokenPipeError:                                 # `numgpt gradcheck --list | head`: quiet, as the
        devnull = os.open(os.devnull, os.O_WRONLY)          # Python docs advise (signal module, "Note on
        os.dup2(devnull, sys.stdout.fileno())               # SIGPIPE"): the interpreter's last flush goes nowhere
        return EXIT_FAILURE


def _main(argv):
    args = build_parser().parse_args(argv)
    with third_parties_quiet():
        if distributed.launched_by_mpi():
            return _main_of_a_rank(args)
        try:
            return _checked_run(args)
        except NumgptError as exc:
            _print_error(args, exc)
            return EXIT_USAGE
        except KeyboardInterrupt:
            return EXIT_SIGNAL[signal.SIGINT]


def _checked_run(args):
    """The subcommand, after its arguments' check (numgpt.cli.arguments): bad input stops before any work."""
    args.check(args)
    return args.run(args)


def _print_error(args, exc, rank=None):
    if debugging():
        traceback.print_exc()
    message = " ".join(str(exc).split()) or type(exc).__name__
    where = "" if not rank else f" (rank {rank})"
    print(f"numgpt {args.command}{where}: error: {message}", file=sys.stderr, flush=True)


# seconds a rank other than 0 waits before reporting its own error: if rank 0 failed alike, its
# MPI_Abort ends this rank first, so an error every rank meets is printed once
RANK_ERROR_GRACE_S = 2.0


def _main_of_a_rank(args):
    """One rank of ``mpiexec -n N numgpt ...``: an error on any rank aborts the whole job
    (MPI_Abort), so that no rank waits forever for one that has gone."""
    world = distributed.world()
    try:
        code = _checked_run(args)
    except NumgptError as exc:
        if not world.is_main:
            time.sleep(RANK_ERROR_GRACE_S)
        _print_error(args, exc, world.rank)
        world.abort(EXIT_USAGE)
    except BaseException:                                   # a bug: its traceback, then the job ends
        if not world.is_main:
            time.sleep(RANK_ERROR_GRACE_S)
        traceback.print_exc()
        world.abort(EXIT_FAILURE)
    return code                                             # every rank returns the same (collective stops)
