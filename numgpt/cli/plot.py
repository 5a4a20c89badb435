"""numgpt plot: redraw a run's loss plot from its metrics.jsonl."""
from numgpt.cli import arguments
from numgpt.errors import UsageError
from numgpt.training.run import RunDirectory


def cmd_plot(args):
    run = RunDirectory(args.run_dir)
    records = run.read_metrics()
    if not records:
        raise UsageError(f"{run.metrics_path} holds no evaluation to plot (expected a numgpt run directory)")
    print(f"Wrote {run.draw_plot(records, args.output)}")
    return 0


def add_parser(sub):
    """The plot subcommand's flags."""
    plot = sub.add_parser("plot", help="redraw a run's loss plot from its metrics.jsonl")
    plot.add_argument("run_dir", metavar="RUN", help="a run directory")
    plot.add_argument("--output", help="the plot file (.pdf, .png or .svg; default RUN/loss-plot.pdf)")
    plot.set_defaults(run=cmd_plot, check=arguments.check_plot)
