"""docs/backprop.md, the guided tour, runs as written: every code block in
order in one namespace, in a temporary directory. Each exercise runs twice:
as the learner finds it, its blank backward makes the check that follows
fail; with numgpt's own op (the answer its fence names) the check passes."""
import importlib
import re
from pathlib import Path

import pytest

TOUR = Path(__file__).resolve().parents[1] / "docs" / "backprop.md"
BLOCK = re.compile(r"```python([^\n]*)\n(.*?)```", re.S)


def tour_blocks():
    """[(info, code)] of the tour's Python blocks, in order."""
    return [(info.strip(), code) for info, code in BLOCK.findall(TOUR.read_text())]


def answer_of(info):
    """numgpt's function that answers an exercise: 'exercise answer=module:function'."""
    module, function = re.search(r"answer=(\S+)", info).group(1).split(":")
    return getattr(importlib.import_module(module), function)


def defined_name(code):
    return re.search(r"^def (\w+)\(", code, re.M).group(1)


def test_every_block_of_the_tour_runs_and_each_exercise_is_checked(tmp_path, capsys, monkeypatch):
    blocks = tour_blocks()
    exercises = [info for info, _ in blocks if info.startswith("exercise")]
    assert len(blocks) >= 15 and len(exercises) == 3
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "tour"}
    pending = None                                  # (function name, answer) of the exercise just shown
    for info, code in blocks:
        if info.startswith("exercise"):
            exec(compile(code, f"{TOUR.name} exercise", "exec"), namespace)
            pending = defined_name(code), answer_of(info)
            continue
        if pending is not None:                     # the check right after an exercise
            name, answer = pending
            with pytest.raises((NotImplementedError, AssertionError)):
                exec(compile(code, f"{TOUR.name} check of the blank {name}", "exec"), dict(namespace))
            namespace[name] = answer
            pending = None
        exec(compile(code, f"{TOUR.name}", "exec"), namespace)
    out = capsys.readouterr().out
    print(out)
    assert (tmp_path / "gpt-graph.svg").read_bytes().startswith(b"<?xml")
    yours, theirs = re.search(r"your losses (\[.*?\]) numgpt's (\[.*?\])", out).groups()
    assert yours == theirs                          # numgpt's answer trains exactly as numgpt does
