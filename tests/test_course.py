"""The course's single source of truth: exercises/ and notebooks/ are generated from solutions/, every stub is
followed by its checker (in the next cell), exercises run up to their first stub, and the self-grading report works."""

import re
from pathlib import Path

import nbformat
import pytest

from sae_minimal.course import build as course_build
from sae_minimal.course import cli, runner

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))


def test_generated_folders_are_up_to_date():
    stale = course_build.build(ROOT, check_only=True)
    assert not stale, f"run `python -m sae_minimal.course build`: out of date: {stale}"


def test_exercise_source_replaces_solutions_and_keeps_hints():
    src = "def f(x):\n    ### BEGIN SOLUTION\n    # HINT: add one\n    return x + 1\n    ### END SOLUTION\n\ncheck_f(f)"
    out = course_build.exercise_source(src, "code")
    assert "return x + 1" not in out and "# HINT: add one" in out and course_build.STUB in out
    assert "check_f(f)" in out
    hidden = "a = 1\n### BEGIN HIDDEN TESTS\nassert a == 1\n### END HIDDEN TESTS"
    assert course_build.exercise_source(hidden, "code") == "a = 1"
    assert "YOUR ANSWER HERE" in course_build.exercise_source("### BEGIN SOLUTION\nproof\n### END SOLUTION", "markdown")
    with pytest.raises(ValueError, match="unclosed"):
        course_build.exercise_source("### BEGIN SOLUTION\nx", "code")


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_every_stub_is_followed_by_its_checker(path):
    ex = nbformat.read(ROOT / "exercises" / path.name, as_version=4)
    code = [c for c in ex.cells if c.cell_type == "code"]
    assert all(not c.outputs for c in code), "exercise notebooks are shipped without outputs"
    stubs = [i for i, c in enumerate(code) if course_build.STUB in c.source]
    assert stubs, f"{path.name} has no exercise"
    for i in stubs:   # the checker is the next cell: nbgrader's locked test cell (tests/test_nbgrader.py)
        assert i + 1 < len(code) and runner.CHECK_CALL.search(code[i + 1].source), \
            f"stub in code cell {i} of {path.name} is not followed by a checker"


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_exercise_runs_up_to_its_first_stub(path, tmp_path):
    """Execute the exercise up to its first checker: everything before it must run, and the checker must say
    the stub is unsolved (not crash somewhere else)."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    ex = nbformat.read(ROOT / "exercises" / path.name, as_version=4)
    stub = next(i for i, c in enumerate(ex.cells) if c.cell_type == "code" and course_build.STUB in c.source)
    first = next(i for i, c in enumerate(ex.cells)
                 if i > stub and c.cell_type == "code" and runner.CHECK_CALL.search(c.source))
    ex.cells = ex.cells[: first + 1]
    client = NotebookClient(ex, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    with pytest.raises(CellExecutionError) as err:
        client.execute()
    assert "NotImplementedError" in str(err.value)
    assert re.search(r"replace the stub", str(err.value)), "the checker should explain what to do"
    failing = [c for c in ex.cells if c.cell_type == "code" and any(o.output_type == "error" for o in c.outputs)]
    assert failing == [ex.cells[first]], "only the stub's checker cell may fail"


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_exercise_calls_every_checker_its_solution_calls(path):
    """`course check` expects the solution's checker calls: one inside a solution block would be
    stripped from the exercise, and every learner would be told it was deleted."""
    ex = nbformat.read(ROOT / "exercises" / path.name, as_version=4)
    called = [n for c in ex.cells if c.cell_type == "code" for n in runner.checker_calls(c.source)]
    assert runner.expected_checkers(ROOT / "exercises" / path.name) == called


def test_reading_notebooks_keep_solutions_without_markers():
    for path in SOLUTIONS:
        rd = nbformat.read(ROOT / "notebooks" / path.name, as_version=4)
        text = "\n".join(c.source for c in rd.cells)
        assert "### BEGIN SOLUTION" not in text and course_build.STUB not in text


def test_check_reports_each_checker(tmp_path, capsys):
    nb_path = tmp_path / "00_introduction.ipynb"
    nb_path.write_text((ROOT / "exercises" / "00_introduction.ipynb").read_text())
    results = dict(runner.check(nb_path))
    assert results["check_overcomplete"].startswith("not attempted")
    assert results["check_recovery_score"].startswith("not attempted")
    solved = tmp_path / "solved.ipynb"
    solved.write_text((ROOT / "solutions" / "00_introduction.ipynb").read_text())
    assert cli.main(["check", str(solved)]) == 0
    assert "2/2 checks passed" in capsys.readouterr().out


def test_execute_runs_notebooks_offline_unless_asked(tmp_path, monkeypatch):
    """`course execute` saves the committed copies, which are the offline course: without --online the
    kernel sees SAE_MINIMAL_OFFLINE=1 (no hub retries or fallback banner saved in the outputs)."""
    monkeypatch.delenv("SAE_MINIMAL_OFFLINE", raising=False)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import os\nprint(os.environ.get('SAE_MINIMAL_OFFLINE'))")]
    path = tmp_path / "probe.ipynb"
    nbformat.write(nb, path)
    assert cli.main(["execute", str(path)]) == 0
    assert nbformat.read(path, as_version=4).cells[0].outputs[0]["text"].strip() == "1"


def test_execute_pins_the_kernels_threads_to_one_unless_told(tmp_path, monkeypatch):
    """The committed copies were executed with one torch thread; another count sums in another order
    and moves the third decimals the prose quotes, so `course execute` pins it (--threads to change)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "2")       # a maintainer's shell; restored after the test
    monkeypatch.setenv("MKL_NUM_THREADS", "2")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import torch\nprint(torch.get_num_threads())")]
    path = tmp_path / "threads.ipynb"
    for argv, expected in (([], "1"), (["--threads", "2"], "2")):
        nbformat.write(nb, path)
        assert cli.main(["execute", str(path), *argv]) == 0
        assert nbformat.read(path, as_version=4).cells[0].outputs[0]["text"].strip() == expected


def test_execute_saves_figures_even_under_an_agg_backend(tmp_path, monkeypatch):
    """`course execute` writes the reading copies: with MPLBACKEND=Agg inherited from the shell (as the
    tests set it), the kernel would draw nothing and the committed cells would lose their figures."""
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([0, 1])")]
    path = tmp_path / "figure.ipynb"
    nbformat.write(nb, path)
    assert cli.main(["execute", str(path)]) == 0
    outputs = nbformat.read(path, as_version=4).cells[0].outputs
    assert any("image/png" in out.get("data", {}) for out in outputs), outputs
