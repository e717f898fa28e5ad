"""The course grades itself under nbgrader: every checker call is a locked test cell with points, hints sit outside
the solution blocks, and the real pipeline (`nbgrader generate_assignment`, then `nbgrader autograde` and
`generate_feedback`) gives a solved submission full marks, an unsolved one zero, and a wrong answer zero with the
checker's explanation in the feedback. The pipeline test needs the teacher extra (nbgrader); the rest does not."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from sae_minimal.course import build as course_build
from sae_minimal.course import cli, runner

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
# The two cheapest notebooks (~10 s each on 2 cores): three coding exercises, three written answers.
PIPELINE = ["00_introduction", "02_welch_bound_capacity"]
# A wrong answer and the start of what its checker says about it.
WRONG = ("    return d_sae / d_in, l0 / d_sae", "    return d_in / d_sae, l0 / d_sae",
         "you divided the wrong way")


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_solutions_are_ready_for_nbgrader(path):
    nb = course_build.read_notebook(path)
    assert course_build.grading_problems(nb) == []
    tests = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade") and c.cell_type == "code"]
    assert tests, f"{path.name} has no autograded exercise"
    for cell in tests:   # one checker per test cell, and it is all the cell does: its output decides the grade
        assert len(runner.checker_calls(cell.source)) == 1 and "\n" not in cell.source.strip()


def test_grading_problems_names_each_problem():
    hint_inside = "def f():\n    ### BEGIN SOLUTION\n    # HINT: think\n    return 1\n    ### END SOLUTION"
    solution = {"nbgrader": {"solution": True, "grade": False, "grade_id": "a", "locked": False}}
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(hint_inside + "\n\ncheck_f(f)", metadata=solution),
        nbformat.v4.new_code_cell("### BEGIN SOLUTION\nx = 1\n### END SOLUTION"),
        nbformat.v4.new_code_cell("check_f(f)", metadata={"nbgrader": {"grade": True, "grade_id": "a",
                                                                        "locked": False, "points": 1}}),
        nbformat.v4.new_markdown_cell("**Why?**\n\n### BEGIN SOLUTION\nBecause.\n### END SOLUTION",
                                      metadata={"nbgrader": {"solution": True, "grade": True, "grade_id": "d",
                                                             "locked": False, "points": 1}}),
    ])
    problems = "\n".join(course_build.grading_problems(nb))
    for expected in ("move its '# HINT:' lines above", "no nbgrader solution metadata",
                     "cell 0 (`def f():`) calls a checker but is not a locked", "cell 2 (`check_f(f)`) calls a checker",
                     "grade_id 'a' is used twice", "cell 3 (`**Why?**`): a written answer's cell holds text"):
        assert expected in problems
    nb.cells[0].source = "def f():\n    # HINT: think\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION"
    nb.cells[1].metadata = {"nbgrader": {"solution": True, "grade": False, "grade_id": "b", "locked": False}}
    nb.cells[2].metadata["nbgrader"].update(locked=True, grade_id="c")
    nb.cells[3].source = nb.cells[3].source.replace("**Why?**\n\n", "")   # the question goes to a locked cell
    assert course_build.grading_problems(nb) == []


def test_nbgrader_command_sets_up_a_course_directory(tmp_path, capsys):
    assert cli.main(["nbgrader", str(tmp_path), "00", "02_welch_bound_capacity"]) == 0
    assert sorted(p.name for p in (tmp_path / "source").iterdir()) == PIPELINE
    assert "c.Execute.timeout" in (tmp_path / "nbgrader_config.py").read_text()
    copy = tmp_path / "source" / PIPELINE[0] / f"{PIPELINE[0]}.ipynb"
    assert copy.read_text() == (ROOT / "solutions" / copy.name).read_text()
    copy.write_text(copy.read_text().replace("d_sae / d_in", "d_in / d_sae"))   # the teacher's own edit is kept...
    assert cli.main(["nbgrader", str(tmp_path)]) == 2
    assert "differ from solutions/" in capsys.readouterr().err and "d_in / d_sae" in copy.read_text()
    assert cli.main(["nbgrader", str(tmp_path), "--force"]) == 0                 # ...unless --force
    assert copy.read_text() == (ROOT / "solutions" / copy.name).read_text()
    assert cli.main(["nbgrader", str(tmp_path), "99"]) == 2
    assert "no solution notebook called 99" in capsys.readouterr().err


# --- the real pipeline -------------------------------------------------------------------------------------------
def nbgrader(course: Path, *args: str) -> None:
    """Run the nbgrader command line in ``course`` with this Python's scripts first on PATH (nbgrader calls
    `alembic` to create its gradebook). Its kernels get one torch thread: on a busy machine two threads wait on
    each other (00's training cell: 88 s with two, 12 s with one, on 2 shared cores); the scores do not change."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"


def submit(course: Path, student: str, name: str, answers: dict[str, str]) -> None:
    """Hand in the released notebook with the solution cells whose grade_id is in ``answers`` filled in."""
    nb = nbformat.read(course / "release" / name / f"{name}.ipynb", as_version=4)
    for cell in nb.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if cell.metadata.get("nbgrader", {}).get("solution") and grade_id in answers:
            cell.source = answers[grade_id]
    folder = course / "submitted" / student / name
    folder.mkdir(parents=True)
    nbformat.write(nb, folder / f"{name}.ipynb")


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """A course directory set up by `course nbgrader`, the PIPELINE assignments generated, and submissions of each
    autograded: solved, unsolved (as released), and for 00 "wrong" (its first exercise wrong, the rest solved)."""
    pytest.importorskip("nbgrader", reason="nbgrader is not installed: pip install -e '.[teacher]'")
    course = tmp_path_factory.mktemp("nbgrader_course")
    assert cli.main(["nbgrader", str(course), *PIPELINE]) == 0
    for name in PIPELINE:
        nbgrader(course, "generate_assignment", name)
        solution = course_build.read_notebook(ROOT / "solutions" / f"{name}.ipynb")
        answers = {c.metadata["nbgrader"]["grade_id"]: course_build.reading_source(c.source)
                   for c in solution.cells if c.metadata.get("nbgrader", {}).get("solution")}
        submit(course, "solved", name, answers)
        submit(course, "unsolved", name, {})
        if name == PIPELINE[0]:
            wrong = {k: v.replace(*WRONG[:2]) for k, v in answers.items()}
            assert wrong != answers, f"WRONG no longer matches a line of {name}'s solution: update it"
            submit(course, "wrong", name, wrong)
        nbgrader(course, "autograde", name)
    nbgrader(course, "generate_feedback", PIPELINE[0], "--student", "wrong")
    yield course
    shutil.rmtree(course, ignore_errors=True)


def scores(course: Path, name: str, student: str) -> dict[str, tuple[float | None, float]]:
    """grade_id -> (automatic score, points) of one autograded submission."""
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        notebook = gb.find_submission(name, student).notebooks[0]
        return {g.name: (g.auto_score, g.max_score) for g in notebook.grades}


@pytest.mark.parametrize("name", PIPELINE)
def test_autograde_gives_full_marks_to_a_solved_submission_and_zero_to_an_unsolved_one(graded, name):
    solved, unsolved = scores(graded, name, "solved"), scores(graded, name, "unsolved")
    checks = [g for g in solved if g.startswith("check_")]
    written = [g for g in solved if g.startswith("answer_")]
    assert checks, f"{name}: no autograded exercise"
    for grade_id in checks:
        assert solved[grade_id][0] == solved[grade_id][1] > 0, f"{name} {grade_id}: solved but {solved[grade_id]}"
        assert unsolved[grade_id][0] == 0, f"{name} {grade_id}: unsolved but scored {unsolved[grade_id]}"
    for grade_id in written:   # written answers: left to the teacher when answered, 0 when left blank
        assert solved[grade_id][0] is None and unsolved[grade_id][0] == 0
    autograded = nbformat.read(graded / "autograded" / "solved" / name / f"{name}.ipynb", as_version=4)
    errors = [c.source[:40] for c in autograded.cells if c.cell_type == "code"
              and any(o.output_type == "error" for o in c.get("outputs", []))]
    assert not errors, f"{name}: cells failed or timed out while autograding the solved submission: {errors}"


def test_a_wrong_answer_scores_zero_with_the_checkers_explanation(graded):
    name = PIPELINE[0]
    wrong = scores(graded, name, "wrong")
    assert wrong["check_overcomplete"] == (0, 1) and wrong["check_recovery_score"] == (2, 2)
    feedback = (graded / "feedback" / "wrong" / name / f"{name}.html").read_text()
    assert WRONG[2] in feedback and "CheckFailed" in feedback


@pytest.mark.parametrize("name", PIPELINE)
def test_release_is_our_exercise_notebook_with_every_hint(graded, name):
    """What nbgrader hands out is exercises/ (code cells alike, the same cells locked, hints kept): learners of
    either get the same."""
    release = nbformat.read(graded / "release" / name / f"{name}.ipynb", as_version=4)
    ours = nbformat.read(ROOT / "exercises" / f"{name}.ipynb", as_version=4)
    assert [c.source for c in release.cells if c.cell_type == "code"] == \
        [c.source for c in ours.cells if c.cell_type == "code"]
    def locks(nb):
        return [(c.metadata.get("deletable", True), c.metadata.get("editable", True)) for c in nb.cells]
    assert locks(release) == locks(ours)
    hints = [line.strip() for c in course_build.read_notebook(ROOT / "solutions" / f"{name}.ipynb").cells
             for line in c.source.split("\n") if line.strip().startswith("# HINT:")]
    released = "\n".join(c.source for c in release.cells)
    assert hints and all(hint in released for hint in hints)
