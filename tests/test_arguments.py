"""The command line's argument layer (numgpt/cli/arguments.py) and its one-line errors:
every subcommand's numeric and path flags walked with bad values, in-process
(numgpt.cli.main) in an empty working directory, each refused with exit 2 and one
line naming the flag and the value, before anything is created, read from the
network or loaded; then the walk's findings one by one, and the quiet command
line (no third-party noise, no BrokenPipeError, help that shows its defaults)."""
import argparse
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from cli_process import ENV, assert_usage_error

from numgpt import cli
from numgpt.cli import common as cli_common, parser as cli_parser, train as cli_train
from numgpt.cli.arguments import byte_size
from numgpt.io.checkpoint import CheckpointManager
from numgpt.models.gpt import PRESETS, GPTModel

FILE, DIR, EMPTY, MISSING = "a-file.txt", "a-directory", "empty.txt", "missing.txt"    # in the fixtures folder


@pytest.fixture
def places(tmp_path, monkeypatch):
    """(fixtures folder, empty working directory, listing of both): a text file, an empty file and a
    directory with no corpus beside an empty cwd; the hub caches point into it, offline."""
    fixtures, cwd = tmp_path / "fixtures", tmp_path / "cwd"
    fixtures.mkdir()
    cwd.mkdir()
    (fixtures / FILE).write_text("Every effort moves you. " * 200)
    (fixtures / EMPTY).write_text("")
    (fixtures / DIR).mkdir()
    monkeypatch.chdir(cwd)
    for name in ("HF_HUB_CACHE", "HF_ENDPOINT", "TRANSFORMERS_OFFLINE", "NUMGPT_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("NUMGPT_HOME", str(tmp_path / "numgpt_home"))
    return fixtures, cwd, listing(tmp_path)


def listing(root):
    return sorted(str(path.relative_to(root)) for path in Path(root).rglob("*"))


def run_in_process(argv, capsys):
    """(exit status, stdout, stderr) of numgpt.cli.main(argv)."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as stop:                  # argparse's own exit
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# (argv, what the one line must name besides the value, the value as the line names it); "@X" is the
# path of fixture X. The source flags (--gpt2 124m) would download: an argument refused first never does.
GEN = ["generate", "--gpt2", "124m", "--prompt", "hi"]
EVAL = ["eval", "--gpt2", "124m", "--data", "@" + FILE]
EXPORT = ["export", "--gpt2", "124m", "--out", "exported"]
TRAIN = ["train", "--preset", "tiny", "--out", "run"]
WALK = [
    *[(TRAIN + [flag, value], flag, value) for flag, values in {
        "--epochs": ["0", "-1", "nan"], "--max-steps": ["0", "-3"], "--batch-size": ["0", "-2", "1.5"],
        "--grad-accum": ["0"], "--context-length": ["0", "-64"], "--lr": ["-1", "nan", "inf"],
        "--warmup-steps": ["-1"], "--initial-lr": ["nan"], "--min-lr": ["-0.1"], "--weight-decay": ["inf"],
        "--drop-rate": ["1.5", "1", "-0.1", "nan"], "--grad-clip": ["-1", "nan"], "--max-skipped-steps": ["0"],
        "--eval-freq": ["0"], "--eval-iter": ["0", "-2"], "--train-ratio": ["0", "1", "1.5", "nan"],
        "--seed": ["-1"], "--checkpoint-every": ["0"], "--keep-last": ["0"], "--threads": ["0", "-4", "100000"],
        "--start-context": [""], "--data": ["@" + DIR, "@" + MISSING, "@" + EMPTY], "--out": ["@" + FILE],
        "--backward": ["layer_norm", "softmaxx=a:b", "layer_norm=@missing.py:f"], "--device": ["gpu"],
        "--tokenizer": ["@" + FILE],
    }.items() for value in values],
    *[(["train", "--init", value, "--out", "run"], "--init", value) for value in ("@" + FILE, "@" + MISSING, "foo")],
    (["train", "--out", "@" + FILE + "/run"], "--out", "@" + FILE),
    (["train", "--init", "gpt2-124m", "--preset", "small"], "--preset", "small"),
    (["train", "--min-lr", "0.001"], "--min-lr", "0.001"),                  # above the default --lr 4e-4
    (["train", "--lr", "1e-4", "--min-lr", "2e-4", "--lr-schedule", "cosine"], "--min-lr", "0.0002"),
    (["train", "--preset", "tiny", "--max-steps", "12", "--batch-size", "8", "--start-context", ""],   # the issue's
     "--start-context", ""),
    *[(GEN + [flag, value], flag, value) for flag, values in {
        "--max-new-tokens": ["-5", "0", "nan"], "--temperature": ["-1", "nan", "inf"], "--top-k": ["0", "-1"],
        "--seed": ["-1"], "--threads": ["0", "100000"], "--device": ["cuda:x"],
    }.items() for value in values],
    (["generate", "--gpt2", "124m", "--prompt", ""], "--prompt", ""),
    (["generate", "--checkpoint", "@" + MISSING, "--prompt", "hi"], "--checkpoint", "@" + MISSING),
    (["generate", "--model", "@" + MISSING, "--prompt", "hi"], "--model", "@" + MISSING),
    (["generate", "--model", "@" + FILE, "--prompt", "hi"], "--model", "@" + FILE),
    *[(EVAL + [flag, value], flag, value) for flag, values in {
        "--batch-size": ["0", "-1"], "--context-length": ["0", "nan"], "--threads": ["-1", "100000"],
        "--data": ["@" + DIR, "@" + MISSING, "@" + EMPTY],
    }.items() for value in values],
    *[(EXPORT + ["--max-shard-size", value], "--max-shard-size", value) for value in ("0", "-5", "0.5", "nan",
                                                                                      "10XB", "MB")],
    (["export", "--gpt2", "124m", "--out", "@" + FILE], "--out", "@" + FILE),
    (["plot", "@" + MISSING], "", "@" + MISSING),
    (["plot", "@" + FILE], "", "@" + FILE),
    (["plot", "@" + DIR, "--output", "x.jpg"], "--output", "x.jpg"),
    (["plot", "@" + DIR, "--output", "missing_dir/x.png"], "--output", "missing_dir/x.png"),
    (["plot", "@" + DIR, "--output", "@" + DIR], "--output", "@" + DIR),
    (["gradcheck", "softmaxx"], "op", "softmaxx"),
    (["gradcheck", "layer_norm", "--backward", "@missing.py:f"], "--backward", "@missing.py"),
    (["download", "gpt2-9b"], "GPT-2 size", "gpt2-9b"),
    (["download", "owner/name", "--revision", ""], "--revision", ""),
    (["download", "not a/repo id"], "repo id", "not a/repo id"),
    (["info", "--threads", "2"], "unrecognized arguments", "--threads 2"),
]


@pytest.mark.parametrize("argv, flag, value", WALK, ids=[" ".join(case[0]) for case in WALK])
def test_a_bad_value_is_one_line_before_anything_is_made(argv, flag, value, places, capsys):
    fixtures, cwd, before = places

    def at(text):
        return text.replace("@", f"{fixtures}/")
    code, out, err = run_in_process([at(a) for a in argv], capsys)
    print(err)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and out == ""
    assert flag in lines[0] and (at(value) if value else "''") in lines[0]
    assert listing(cwd.parent) == before                                  # nothing created, nothing downloaded


def test_a_negative_token_count_is_refused_before_any_download(tmp_path):
    """The issue's first command, as a real process, with a hub that does not answer: the
    argument error, at once, and no cache made."""
    env = dict(ENV, HF_HOME=str(tmp_path / "hf"), NUMGPT_HOME=str(tmp_path / "numgpt"),
               HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}")
    env.pop("HF_HUB_OFFLINE", None)
    result = subprocess.run([sys.executable, "-m", "numgpt", "generate", "--gpt2", "124m", "--prompt", "hi",
                             "--max-new-tokens", "-5"], capture_output=True, text=True, timeout=60, env=env)
    assert_usage_error(result, "--max-new-tokens", "'-5'")
    assert listing(tmp_path) == []


# ---------------------------------------------------------------- the walk's findings
def test_the_shard_size_is_read_as_transformers_reads_it():
    sizes = {"10": 10, "1": 1, "10KB": 10_000, "10MB": 10_000_000, "5GB": 5_000_000_000, "10KiB": 10_240,
             "3MiB": 3_145_728, "2GiB": 2_147_483_648, "5Gb": 625_000_000, "1.5MB": 1_500_000, "10 mb": 1_250_000}
    for text, expected in sizes.items():
        assert byte_size(text) == expected, text
    for text in ("0", "-5", "0.5", "nan", "inf", "", "MB", "10XB", "10TB", "1e3"):
        with pytest.raises(argparse.ArgumentTypeError, match="at least 1 byte"):
            byte_size(text)


def test_a_corpus_too_short_names_the_split_its_tokens_and_the_flags(tmp_path, verdict_text, capsys):
    """A 600-token file: the validation split (the last 10%) has 59 tokens, fewer than one window of 64."""
    data = tmp_path / "short.txt"
    data.write_text(verdict_text[:2450])                               # 610 tokens
    base = ["train", "--preset", "tiny", "--context-length", "64", "--data", data]
    code, _, err = run_in_process(base + ["--out", tmp_path / "a"], capsys)
    print(err)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "the validation split" in err and "has 59 tokens" in err and "needs 65" in err
    assert "--train-ratio" in err and "--context-length" in err
    code, _, err = run_in_process(base + ["--train-ratio", "0.01", "--out", tmp_path / "b"], capsys)
    print(err)
    assert code == 2 and "the training split" in err and "needs 65" in err and "a larger --train-ratio" in err
    code, _, err = run_in_process(["eval", "--checkpoint", tiny_run(tmp_path / "run"), "--data", data,
                                   "--context-length", "64", "--batch-size", "1"], capsys)
    assert code == 0, err                                               # the whole file holds windows of 64


def tiny_run(directory, context_length=64):
    """A run directory holding one committed checkpoint of the tiny preset."""
    model = GPTModel(dict(PRESETS["tiny"], context_length=context_length, drop_rate=0.0))
    CheckpointManager(Path(directory) / "checkpoints").save(1, model)
    return directory


def test_an_init_that_contradicts_the_preset_or_the_context_is_refused(tmp_path, verdict_path, capsys):
    run = tiny_run(tmp_path / "init")
    base = ["train", "--init", run, "--data", verdict_path, "--max-steps", "1"]
    code, _, err = run_in_process(base + ["--preset", "small", "--out", tmp_path / "a"], capsys)
    assert code == 2 and "--preset small contradicts --init" in err
    assert not (tmp_path / "a").exists()
    code, _, err = run_in_process(base + ["--context-length", "128", "--out", tmp_path / "b"], capsys)
    print(err)
    assert code == 2 and "--context-length 128" in err and "64 positions" in err    # it trained at 64 before
    code, _, err = run_in_process(["eval", "--checkpoint", run, "--data", verdict_path, "--context-length", "128"],
                                  capsys)
    assert code == 2 and "--context-length 128" in err and "64 positions" in err


def test_plot_names_the_users_path(tmp_path, capsys):
    """Each was a traceback, named the internal .x.partial.jpg, or said 'holds no evaluation'."""
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "epoch": 0.1, "tokens_seen": 64, "train_loss": 9.0, '
                                            '"val_loss": 9.5}\n')
    for argv, fragment in ((["--output", "x.jpg"], "--output x.jpg: expected a file name ending in .pdf"),
                           (["--output", "missing_dir/x.png"], "its folder missing_dir does not exist")):
        code, _, err = run_in_process(["plot", tmp_path, *argv], capsys)
        assert code == 2 and fragment in err and "partial" not in err and len(err.strip().splitlines()) == 1
    code, _, err = run_in_process(["plot", tmp_path / "no_such_dir"], capsys)
    assert code == 2 and "no_such_dir does not exist" in err and "evaluation" not in err
    code, _, err = run_in_process(["plot", tmp_path / "metrics.jsonl"], capsys)
    assert code == 2 and "metrics.jsonl is a file: expected a run directory" in err
    code, out, _ = run_in_process(["plot", tmp_path, "--output", tmp_path / "x.png"], capsys)
    assert code == 0 and (tmp_path / "x.png").is_file()                   # the good case still draws


# ---------------------------------------------------------------- a quiet command line
def test_help_shows_every_default():
    """`generate --help` showed none. Train's flags default to None on the command line (a resume tells
    typed flags from defaults), so their help names TRAIN_DEFAULTS' value in its text."""
    parser = cli_parser.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    formatter = cli_common.DefaultsFormatter("numgpt")
    checked = 0
    for command, sub in subparsers.items():
        for action in sub._actions:
            default = cli_train.TRAIN_DEFAULTS.get(action.dest) if command == "train" else action.default
            if not action.option_strings or default in (None, [], argparse.SUPPRESS) or default is False:
                continue
            checked += 1
            assert "default" in formatter._get_help_string(action), (command, action.option_strings)
    assert checked >= 20                                                  # the walk saw the flags
    generate_help = subparsers["generate"].format_help()
    assert "(default: 50)" in generate_help and "(default: 123)" in generate_help


def test_a_closed_pipe_is_quiet():
    """`numgpt gradcheck --list | head` ended in a BrokenPipeError traceback: here the reader is gone
    before numgpt writes (its stdout closed at once), so every write meets the closed pipe."""
    for argv, status in ((["gradcheck", "--list"], 1), (["generate", "--help"], 0)):   # help: argparse's own
        process = subprocess.Popen([sys.executable, "-m", "numgpt", *argv], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, env=ENV)
        process.stdout.close()
        _, err = process.communicate(timeout=60)
        print(err.decode())
        assert process.returncode == status and err == b"", argv


def closed_port():
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# huggingface_hub retries a refused connection 5 times, 23 s of sleep: its sleep is skipped here
NO_BACKOFF = """
import sys, types
import huggingface_hub.utils._http as http
http.time = types.SimpleNamespace(sleep=lambda seconds: None, time=http.time.time)
from numgpt.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_failed_download_is_one_line_and_numgpt_debug_shows_the_retries(tmp_path):
    """Without HF_HUB_OFFLINE and with no hub answering, huggingface_hub's retry warnings came before
    numgpt's error (12 lines)."""
    env = dict(ENV, HF_HOME=str(tmp_path / "hf"), NUMGPT_HOME=str(tmp_path / "numgpt"),
               HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}")
    env.pop("HF_HUB_OFFLINE", None)
    argv = [sys.executable, "-c", NO_BACKOFF, "generate", "--gpt2", "124m", "--prompt", "hi"]
    quiet = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert_usage_error(quiet, "could not download config.json", "Connection refused")
    loud = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=dict(env, NUMGPT_DEBUG="1"))
    assert loud.returncode == 2 and "Retrying in" in loud.stderr and "thrown while requesting HEAD" in loud.stderr
    assert loud.stderr.strip().splitlines()[-1] == quiet.stderr.strip()


def test_hub_progress_bars_stay_off_stderr_off_a_terminal(tmp_path):
    from hub_server import HubServer
    from test_hub import REPO, hub_files
    with HubServer(hub_files()) as server:
        results = {debug: subprocess.run([sys.executable, "-m", "numgpt", "download", REPO], capture_output=True,
                                         text=True, timeout=120,
                                         env=dict(ENV, HF_ENDPOINT=server.url, HF_HOME=str(tmp_path / debug),
                                                  NUMGPT_DEBUG=debug))
                   for debug in ("0", "1")}
    for result in results.values():
        assert result.returncode == 0 and f"{REPO} in" in result.stdout, result.stderr
    assert results["0"].stderr == "" and "Fetching 6 files" in results["1"].stderr


THREE_WARNINGS = """
import warnings
import numba
import numgpt.io.checkpoint
from numgpt.cli.quiet import third_parties_quiet

@numba.njit(parallel=True)
def nothing_parallel(x):
    return x + 1

with third_parties_quiet():
    nothing_parallel(1)
    warnings.warn_explicit("a library's warning", UserWarning, numba.__file__, 1)
    warnings.warn_explicit("numgpt's own warning", UserWarning, numgpt.io.checkpoint.__file__, 1)
"""


def test_third_party_warnings_are_silenced_and_numgpts_own_shown(tmp_path):
    """A real numba warning (parallel=True with nothing to parallelise), a warning from a library's file
    and one from numgpt's: only numgpt's reaches stderr; NUMGPT_DEBUG=1 shows all three. (A script in a
    file: numba keeps quiet about functions defined in `python -c` code.)"""
    script = tmp_path / "three_warnings.py"
    script.write_text(THREE_WARNINGS)
    for debug, shown in (("0", ["numgpt's own warning"]),
                         ("1", ["NumbaPerformanceWarning", "a library's warning", "numgpt's own warning"])):
        result = subprocess.run([sys.executable, script], capture_output=True, text=True,
                                timeout=120, env=dict(ENV, NUMGPT_DEBUG=debug))
        print(result.stderr)
        assert result.returncode == 0 and all(text in result.stderr for text in shown)
        if debug == "0":
            assert "Numba" not in result.stderr and "a library's" not in result.stderr
