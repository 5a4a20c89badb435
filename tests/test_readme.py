"""The README's example runs, and its test command is the one .ci/run runs."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(markdown):
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def test_the_readme_example_runs():
    example = python_blocks((ROOT / "README.md").read_text())[0]
    result = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True, cwd=ROOT, timeout=300)
    print(result.stdout, result.stderr)
    assert result.returncode == 0
    loss = float(re.search(r"loss after one epoch: (\d+\.\d+)", result.stdout).group(1))
    assert loss < 10.0
    assert result.stdout.strip().splitlines()[-1].startswith("Every effort moves you")


def test_ci_runs_the_readme_commands_in_a_fresh_clone_with_nothing_beside_it():
    readme, ci = (ROOT / "README.md").read_text(), (ROOT / ".ci" / "run").read_text()
    test_command = re.search(r"^(pip install -e '\.\[test\]' && ruff check \. && python -m pytest.*)$", readme,
                             flags=re.M).group(1)
    assert test_command.strip() in ci
    assert "mktemp -d" in ci and "git clone" in ci             # an empty directory: no ../shared beside it
    run_command = re.search(r"^(pip install -e \. && numgpt train.*)$", readme, flags=re.M).group(1)
    assert "--data" not in run_command                         # the bundled corpus: nothing to fetch or place


def test_no_test_reads_outside_the_repository():
    for path in (ROOT / "tests").rglob("*.py"):
        assert "shared" + "/data" not in path.read_text(), path
