"""numgpt's top-level kernels/ folder is the package numgpt.kernels and never a
top-level ``kernels``: from the repository root (the current directory first on
sys.path) it must not hide another package of that name, as it hid Hugging
Face's ``kernels``, which transformers imports. Each check runs a fresh Python
in the repository root, as a notebook or a script beside the README would."""
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]

WHICH_KERNELS = """
import kernels
import numgpt.kernels
print(kernels.__file__)
print(kernels.CUDAProperties)
print(numgpt.kernels.__file__)
print(numgpt.kernels.linear.__name__)
"""


def python_in_repository(code, *options):
    return subprocess.run([sys.executable, *options, "-c", code], cwd=REPOSITORY, capture_output=True, text=True,
                          timeout=120)


def stand_in_package(folder):
    """A top-level ``kernels`` package of someone else's, as Hugging Face's installs."""
    package = folder / "kernels"
    package.mkdir()
    (package / "__init__.py").write_text('CUDAProperties = "the stand-in\'s"\n')
    return package


def test_another_kernels_package_wins_over_the_folder_from_the_repository_root(tmp_path, monkeypatch):
    package = stand_in_package(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))          # after the current directory, as site-packages is
    result = python_in_repository(WHICH_KERNELS)
    assert result.returncode == 0, result.stderr
    their_file, their_name, our_file, our_kernel = result.stdout.split("\n")[:4]
    assert Path(their_file) == package / "__init__.py" and their_name == "the stand-in's"
    assert Path(our_file) == REPOSITORY / "kernels" / "__init__.py"
    assert our_kernel == "numgpt.kernels.linear"


def test_the_folder_is_not_importable_as_a_top_level_package(monkeypatch):
    monkeypatch.delenv("PYTHONPATH", raising=False)
    for module in ("kernels", "kernels.matmul"):
        result = python_in_repository(f"import {module}", "-S")     # -S: no site-packages, no other kernels
        print(result.stderr.strip().splitlines()[-1])
        assert result.returncode == 1
        assert "ModuleNotFoundError: No module named 'kernels'" in result.stderr
        assert "imported as numgpt.kernels" in result.stderr


def test_transformers_model_classes_import_from_the_repository_root():
    """The finding itself, where transformers and Hugging Face's kernels are installed (they are not
    in numgpt's test extra: the stand-in test above is the check that always runs)."""
    pytest.importorskip("transformers", reason="transformers is not installed (pip install transformers)")
    pytest.importorskip("kernels", reason="Hugging Face's kernels package is not installed")
    result = python_in_repository("import transformers, kernels; transformers.GPT2LMHeadModel; "
                                  "import numgpt.kernels; print(kernels.__file__)")
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) != REPOSITORY / "kernels" / "__init__.py"
