"""Fault injection for the course tools: false grades, leaked solutions, hangs, broken notebooks.

Each test feeds the checkers, `course check`, `course run` or `course build` what a learner or a
teacher could produce by accident, and asserts that the tools notice and say what to fix. Executed
notebooks are tiny and define their own checkers (no torch import), so a kernel run takes seconds.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import nbformat
import pytest
import torch
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from sae_minimal.course import checks
from sae_minimal.course import build as course_build
from sae_minimal.course import cli, runner

# Checkers written into the tiny notebooks: they print the same "PASSED name: ..." line as the real
# ones, which is all `course check` reads.
CHECKERS = "\n\n".join(
    f"def check_{word}(fn):\n"
    f"    assert fn() == {n}, 'check_{word}: expected {n}'\n"
    f"    print('PASSED check_{word}: ok')"
    for n, word in enumerate(["one", "two", "three"], 1))
SOLVED = ["def f():\n    return 1\ncheck_one(f)", "def g():\n    return 2\ncheck_two(g)",
          "def h():\n    return 3\ncheck_three(h)"]


def write_nb(path: Path, cells: list) -> Path:
    """A notebook of code cells (strings) and Markdown cells (("md", text))."""
    path.parent.mkdir(parents=True, exist_ok=True)
    made = [new_markdown_cell(c[1]) if isinstance(c, tuple) else new_code_cell(c) for c in cells]
    nbformat.write(new_notebook(cells=made), path)
    return path


def tiny_course(root: Path, exercise_cells: list, name: str = "00_tiny.ipynb") -> Path:
    """root/solutions/<name> calls check_one, check_two, check_three; returns the learner's
    root/exercises/<name> made of ``exercise_cells``."""
    write_nb(root / "solutions" / name, [CHECKERS, *SOLVED])
    return write_nb(root / "exercises" / name, exercise_cells)


def unexecuted(path: Path, **kwargs):
    """Stands in for runner.execute where a test is about the grading logic, not the kernel."""
    return course_build.read_notebook(path)


# --- a checker call that was deleted or changed is reported, never "all passed" ------------------
def test_deleted_checker_call_is_reported_not_called(tmp_path, capsys):
    exercise = tiny_course(tmp_path, [CHECKERS, *SOLVED[:2]])   # the check_three cell deleted
    assert cli.main(["check", str(exercise), "--timeout", "60"]) == 1
    out = capsys.readouterr().out
    assert "check_three  not called — the cell that calls it was deleted or changed" in out
    assert "2/3 checks passed" in out


@pytest.mark.parametrize("changed", [
    "def h():\n    return 3\n# check_three(h)",             # commented out
    "def h():\n    return 3\nprint('check_three(h)')",      # only in a string
    "def check_three(fn):\n    print('PASSED check_three: ok')",   # a definition, not a call
    ("md", "def h():\n    return 3\ncheck_three(h)"),          # turned into a Markdown cell
])
def test_changed_checker_call_is_reported_not_called(tmp_path, monkeypatch, changed):
    monkeypatch.setattr(runner, "execute", unexecuted)
    results = runner.check(tiny_course(tmp_path, [CHECKERS, *SOLVED[:2], changed]))
    assert ("check_three", runner.NOT_CALLED) in results


def test_renamed_copy_is_graded_against_the_solution_with_its_number(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "execute", unexecuted)
    tiny_course(tmp_path, [CHECKERS])
    copy = write_nb(tmp_path / "exercises" / "00_tiny-Copy1.ipynb", [CHECKERS, SOLVED[0]])
    assert runner.solution_for(copy) == tmp_path / "solutions" / "00_tiny.ipynb"
    assert dict(runner.check(copy))["check_two"] == runner.NOT_CALLED


def test_notebook_without_a_solution_says_deletions_cannot_be_seen(tmp_path, monkeypatch,
                                                                   capsys):
    monkeypatch.setattr(runner, "execute", unexecuted)
    monkeypatch.chdir(tmp_path)
    lone = write_nb(tmp_path / "mine.ipynb", [CHECKERS, SOLVED[0]])
    cli.main(["check", str(lone)])
    assert "cannot be noticed" in capsys.readouterr().err


def test_checker_calls_reads_code_not_text():
    assert runner.checker_calls("checks.check_a(f)\ncheck_b (g)  # check_c(h)\ncheck_a(f)") == [
        "check_a", "check_b"]
    assert runner.checker_calls("x = (\ncheck_d(f)") == ["check_d"]   # unbalanced: by text


def test_other_checker_failing_first_in_a_cell_is_not_blamed_on_this_one():
    cell = new_code_cell("check_one(f); check_two(g)")
    cell.outputs = [nbformat.v4.new_output("error", ename="CheckFailed",
                                           evalue="check_one: expected 1", traceback=[])]
    assert runner._outcome([cell], 0, "check_one") == "FAILED: CheckFailed: expected 1"
    assert runner._outcome([cell], 0, "check_two").startswith("not run (check_one failed")


# --- a syntax error is reported in its own cell, with its line ------------------------------------
def test_syntax_errors_are_reported_where_they_are(tmp_path):
    exercise = tiny_course(tmp_path, [
        CHECKERS,
        "def f(:\n    return 1",                        # 1: breaks the definition check_one needs
        "check_one(f)",                                 # 2: would say NameError
        "def g():\n    return 2\n\ncheck_two(g))",      # 3: breaks its own checker cell
        "def h():\nreturn 3",                           # 4: IndentationError
        "check_three(h)",
    ])
    results = dict(runner.check(exercise, timeout=60))
    assert "SyntaxError in cell 1" in results["check_one"]
    assert "line 1: `def f(:`" in results["check_one"]
    assert "NameError" not in results["check_one"]
    assert "SyntaxError in cell 3" in results["check_two"]
    assert "line 4: `check_two(g))`" in results["check_two"]
    assert "IndentationError in cell 4" in results["check_three"]
    assert "line 2" in results["check_three"]


# --- nothing hangs: checkers and cells have time limits -------------------------------------------
def spin(*args):
    while True:
        try:                  # swallowing exceptions must not defeat the limit
            time.sleep(0.01)
        except Exception:     # noqa: BLE001
            pass


# the checkers that also take the lab's model, SAE and tokens: their time limit is tested beside
# their other tests (tests/test_checks_splice.py), where a model is loaded
MODEL_CHECKERS = {"check_ce_loss_recovered"}
ALL_CHECKERS = [getattr(checks, n) for n in dir(checks)
                if n.startswith("check_") and n not in MODEL_CHECKERS]


@pytest.mark.parametrize("checker", ALL_CHECKERS, ids=lambda c: c.__name__)
def test_every_checker_stops_a_function_that_never_returns(checker, monkeypatch):
    monkeypatch.setattr(checks, "CALL_TIMEOUT_S", 0.2)
    t0 = time.perf_counter()
    with pytest.raises(checks.CheckFailed, match="did not return within 0.2 s: an infinite loop"):
        checker(spin)
    assert time.perf_counter() - t0 < 60       # stopped, not hung (loose: a loaded machine is slow)
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0), "the alarm must be cancelled"
    assert signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, signal.SIG_IGN, None)


def test_checker_time_limit_outside_the_main_thread(monkeypatch):
    """Where no alarm is available (a worker thread, Windows) the call runs in a thread the checker
    stops waiting for."""
    monkeypatch.setattr(checks, "CALL_TIMEOUT_S", 0.2)
    stop, caught = threading.Event(), []

    def loop_until_stopped(*args):
        while not stop.is_set():
            time.sleep(0.01)

    def grade():
        try:
            checks.check_overcomplete(loop_until_stopped)
        except checks.CheckFailed as e:
            caught.append(str(e))
    worker = threading.Thread(target=grade)
    worker.start()
    worker.join(10)
    stop.set()
    assert caught and "did not return within 0.2 s" in caught[0], caught


def test_time_limit_leaves_correct_answers_alone(capsys):
    checks.check_overcomplete(lambda d_sae, d_in, l0: (d_sae / d_in, l0 / d_sae))
    assert capsys.readouterr().out.startswith("PASSED check_overcomplete:")
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_run_stops_a_cell_that_never_ends_and_names_failing_cells(tmp_path, capsys):
    write_nb(tmp_path / "00_loop.ipynb", ["print('start')", "while True:\n    pass"])
    write_nb(tmp_path / "01_ok.ipynb", ["print('fine')"])
    write_nb(tmp_path / "02_syntax.ipynb", ["x = 1", "def f(:\n    pass", "f()"])
    t0 = time.perf_counter()
    assert cli.main(["run", "--dir", str(tmp_path), "--timeout", "3"]) == 1
    assert time.perf_counter() - t0 < 90
    out = capsys.readouterr().out
    assert "cell 1 (`while True:`) ran longer than the limit of 3 s per cell" in out
    assert "SyntaxError in cell 1 (`def f(:`), line 1: `def f(:`" in out
    assert "1 ok, 2 failed" in out


def test_check_stops_a_hung_cell_and_grades_the_rest(tmp_path):
    exercise = tiny_course(tmp_path, [CHECKERS, "def f():\n    while True:\n        pass\n"
                                                "check_one(f)", *SOLVED[1:]])
    results = dict(runner.check(exercise, timeout=3))
    assert results["check_one"].startswith("FAILED: the cell did not finish within 3 s")
    assert results["check_two"] == results["check_three"] == "passed"


def test_cell_time_limit_is_an_option_with_a_sensible_default():
    assert 900 <= runner.CELL_TIMEOUT_S < 1800   # the longest full-mode cell: ~5-15 min
    with pytest.raises(SystemExit):
        cli.main(["run", "--timeout", "0"])


# --- a broken notebook file: one line naming it, no traceback -------------------------------------
BROKEN = {
    "empty": b"",
    "truncated": b'{"cells": [{"cell_type": "code", "sou',
    "a list": b"[]",
    "no cells": json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}}).encode(),
    "a bad cell": json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {},
                              "cells": [{"cell_type": "code", "source": 5}]}).encode(),
    "a cell without outputs": json.dumps({
        "nbformat": 4, "nbformat_minor": 4, "metadata": {},
        "cells": [{"cell_type": "code", "source": "x", "metadata": {}, "execution_count": None}]
    }).encode(),
    "not text": b"\xff\xfe\x00garbage",
    "python": b"print('hello')\n",
}


def assert_one_line_error(err: str, name: str) -> None:
    assert "Traceback" not in err
    assert err.strip().count("\n") == 0, err
    assert name in err and "not a valid notebook" in err


@pytest.mark.parametrize("content", BROKEN.values(), ids=BROKEN.keys())
def test_broken_notebook_gives_one_line(tmp_path, monkeypatch, capsys, content):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "solutions").mkdir()
    (tmp_path / "broken.ipynb").write_bytes(content)
    for argv in (["check", "broken.ipynb"], ["execute", "broken.ipynb"]):
        assert cli.main(argv) == 2
        assert_one_line_error(capsys.readouterr().err, "broken.ipynb")
    (tmp_path / "solutions" / "00_broken.ipynb").write_bytes(content)
    assert cli.main(["build"]) == 2
    assert_one_line_error(capsys.readouterr().err, "00_broken.ipynb")
    assert not (tmp_path / "exercises").exists()
    assert cli.main(["run", "--dir", "solutions"]) == 1
    row = next(line for line in capsys.readouterr().out.splitlines() if "00_broken" in line)
    assert "FAILED" in row and "not a valid notebook" in row


def test_broken_solution_is_named_when_checking(tmp_path, monkeypatch, capsys):
    exercise = tiny_course(tmp_path, [CHECKERS, *SOLVED])
    (tmp_path / "solutions" / "00_tiny.ipynb").write_text("{")
    assert cli.main(["check", str(exercise)]) == 2
    assert_one_line_error(capsys.readouterr().err, str(tmp_path / "solutions" / "00_tiny.ipynb"))


# --- build: no marker spelling leaks a solution; a bad marker stops the build before writing ------
SECRET = "return the_secret_answer"


def solution_cell(begin: str, end: str) -> str:
    return f"def f():\n    {begin}\n    # HINT: think\n    {SECRET}\n    {end}\n\ncheck_one(f)"


VARIANTS = [("## BEGIN SOLUTION", "## END SOLUTION"),
            ("### BEGIN SOLUTION (part a)", "### END SOLUTION (part a)"),
            ("### begin solution", "### end solution"),
            ("#BEGIN SOLUTION", "#END SOLUTION"),
            ("###   BEGIN    SOLUTION", "###END SOLUTION"),
            ("# Begin_Solution", "# END-SOLUTION"),
            ("### BEGIN SOLUTION", "## end solution (part a)")]


@pytest.mark.parametrize("begin, end", VARIANTS)
def test_marker_variants_never_leak_the_solution(tmp_path, begin, end):
    write_nb(tmp_path / "solutions" / "00_a.ipynb", [
        CHECKERS, solution_cell(begin, end), ("md", f"{begin}\nThe proof: {SECRET}\n{end}")])
    course_build.build(tmp_path)
    exercise = (tmp_path / "exercises" / "00_a.ipynb").read_text()
    assert SECRET not in exercise and "YOUR ANSWER HERE" in exercise
    assert course_build.STUB in exercise and "# HINT: think" in exercise
    reading = (tmp_path / "notebooks" / "00_a.ipynb").read_text()
    assert SECRET in reading and "SOLUTION" not in reading.upper().replace("SOLUTIONS", "")


@pytest.mark.parametrize("cell, problem", [
    (f"def f():\n    return 1  ### BEGIN SOLUTION\n    {SECRET}\n### END SOLUTION",
     "not a marker line"),
    (f"s = '''\n### BEGIN SOLUTION\n'''\n{SECRET}\n", "closes no open|unclosed"),
    (("md", f"<!-- BEGIN SOLUTION -->\n{SECRET}\n<!-- END SOLUTION -->"), "not a marker line"),
    (("md", f"**BEGIN SOLUTION**\n{SECRET}"), "not a marker line"),
    (f"### BEGIN SOLUTION\n{SECRET}", "unclosed solution block opened on line 1"),
    (f"{SECRET}\n### END SOLUTION", "closes no open solution block"),
    (f"### BEGIN SOLUTION\n### BEGIN SOLUTION\n{SECRET}\n### END SOLUTION\n### END SOLUTION",
     "do not nest"),
    (f"### BEGIN SOLUTION\n{SECRET}\n### END HIDDEN TESTS", "closes no open hidden block"),
])
def test_bad_markers_stop_the_build_before_anything_is_written(tmp_path, cell, problem):
    write_nb(tmp_path / "solutions" / "00_good.ipynb", [CHECKERS, solution_cell(
        "### BEGIN SOLUTION", "### END SOLUTION")])
    write_nb(tmp_path / "solutions" / "01_bad.ipynb", [CHECKERS, "x = 1", cell])
    with pytest.raises(course_build.CourseError, match=problem) as err:
        course_build.build(tmp_path)
    assert "solutions/01_bad.ipynb: cell 2 (" in str(err.value)
    assert "nothing was written" in str(err.value)
    assert not (tmp_path / "exercises").exists() and not (tmp_path / "notebooks").exists()


def built(root: Path) -> list[Path]:
    return [root / "exercises" / "00_good.ipynb", root / "notebooks" / "00_good.ipynb"]


def test_bad_marker_leaves_existing_exercises_untouched(tmp_path, monkeypatch, capsys):
    write_nb(tmp_path / "solutions" / "00_good.ipynb", [CHECKERS, solution_cell(
        "### BEGIN SOLUTION", "### END SOLUTION")])
    course_build.build(tmp_path)
    before = {p: p.read_bytes() for p in built(tmp_path)}
    write_nb(tmp_path / "solutions" / "00_good.ipynb", [CHECKERS, "y = 2", solution_cell(
        "### BEGIN SOLUTION", "### END SOLUTION")])   # changed: would be rewritten...
    write_nb(tmp_path / "solutions" / "01_bad.ipynb", [f"### BEGIN SOLUTION\n{SECRET}"])
    monkeypatch.chdir(tmp_path)
    assert cli.main(["build"]) == 2                 # ...but another notebook is broken
    err = capsys.readouterr().err
    assert err.startswith("error: build stopped, nothing was written: solutions/01_bad.ipynb: "
                          "cell 0 (`### BEGIN SOLUTION`): unclosed solution block")
    assert {p: p.read_bytes() for p in built(tmp_path)} == before
    assert not (tmp_path / "exercises" / "01_bad.ipynb").exists()


# --- checkers: inputs changed in place cannot fool them ------------------------------------------
def _topk_grads(x, W_enc, b_enc, W_dec, b_dec, k, *, relu=True, mask="active"):
    """Hand-written TopK gradients; relu=False forgets the ReLU on the selected values, mask
    "selected" lets gradient through every selected latent (negative pre-activations too)."""
    pre = x @ W_enc + b_enc
    values, indices = pre.topk(k, dim=-1)
    z = torch.zeros_like(pre).scatter(-1, indices, values.relu() if relu else values)
    g_xhat = 2 * (z @ W_dec + b_dec - x) / x.shape[0]
    keep = (z > 0) if mask == "active" else torch.zeros_like(pre).scatter(-1, indices, 1.0)
    g_pre = (g_xhat @ W_dec.T) * keep
    return {"W_enc": x.T @ g_pre, "b_enc": g_pre.sum(0), "W_dec": z.T @ g_xhat,
            "b_dec": g_xhat.sum(0)}


def test_topk_backward_in_place_normalised_decoder_fails():
    """Normalising W_dec in place, then differentiating correctly at the normalised decoder, used
    to pass: the checker computed its reference from the already-changed W_dec."""
    def normalises(x, W_enc, b_enc, W_dec, b_dec, k):
        W_dec /= W_dec.norm(dim=-1, keepdim=True)
        return _topk_grads(x, W_enc, b_enc, W_dec, b_dec, k)
    with pytest.raises(checks.CheckFailed, match="changed its argument `W_dec` in place"):
        checks.check_topk_backward(normalises)


def test_matryoshka_in_place_masking_and_appending_fail():
    def masks(x, latents, W_dec, b_dec, prefix_sizes):   # zeroing stays for the larger prefixes
        total = 0
        for m in prefix_sizes:
            latents[:, m:] = 0
            total = total + ((latents @ W_dec + b_dec - x) ** 2).sum(-1).mean()
        return total

    def appends(x, latents, W_dec, b_dec, prefix_sizes):   # adds d_sae once more
        prefix_sizes.append(latents.shape[1])
        return sum(((latents[:, :m] @ W_dec[:m] + b_dec - x) ** 2).sum(-1).mean()
                   for m in prefix_sizes)

    def centres(x, latents, W_dec, b_dec, prefix_sizes):   # the right value, x destroyed
        x -= b_dec
        return sum(((latents[:, :m] @ W_dec[:m] - x) ** 2).sum(-1).mean() for m in prefix_sizes)

    with pytest.raises(checks.CheckFailed, match="changed its argument `latents` in place"):
        checks.check_matryoshka_loss(masks)
    with pytest.raises(checks.CheckFailed, match="`prefix_sizes` in place.*append"):
        checks.check_matryoshka_loss(appends)
    with pytest.raises(checks.CheckFailed, match="changed its argument `x` in place"):
        checks.check_matryoshka_loss(centres)


def test_ablation_that_edits_the_sae_fails():
    def zeroes_decoder_row(x, sae, latent):   # the right value, the SAE destroyed
        f = sae.encode(x)
        before = sae.decode(f)
        sae.W_dec[latent] = 0
        return x - (before - sae.decode(f))
    with pytest.raises(checks.CheckFailed, match="changed its argument `sae` in place"):
        checks.check_ablate_latent(zeroes_decoder_row)


def change_everything(*args):
    """Changes every tensor, list and module it is given, then returns nothing useful."""
    with torch.no_grad():
        for arg in args:
            if isinstance(arg, torch.Tensor):
                arg.logical_not_() if arg.dtype == torch.bool else arg.add_(1)
            elif isinstance(arg, list):
                arg.append(1)
            elif isinstance(arg, torch.nn.Module):
                next(arg.parameters()).add_(1.0)
    return None


IN_PLACE_CHECKERS = [c for c in ALL_CHECKERS
                     if c not in (checks.check_overcomplete, checks.check_welch_bound)]


@pytest.mark.parametrize("checker", IN_PLACE_CHECKERS, ids=lambda c: c.__name__)
def test_every_checker_refuses_in_place_changes(checker):
    with pytest.raises(checks.CheckFailed, match="in place"):
        checker(change_everything)


# --- check_topk_backward: the ReLU on the selected latents --------------------------------------
def test_topk_backward_needs_the_relu_on_selected_latents(capsys):
    checks.check_topk_backward(_topk_grads)
    assert capsys.readouterr().out == ("PASSED check_topk_backward: 3 cases match autograd "
                                       "(gradient flows only through the k selected latents)\n")
    for relu, mask, hint in ((False, "selected", "kept its negative value"),
                             (False, "active", "kept its negative value"),
                             (True, "selected", "mask by z > 0")):
        with pytest.raises(checks.CheckFailed, match=hint):
            checks.check_topk_backward(
                lambda *a, relu=relu, mask=mask: _topk_grads(*a, relu=relu, mask=mask))



def test_course_command_without_the_course_extra_names_the_extra(monkeypatch, capsys):
    """`python -m sae_minimal.course build` on a core-only install: one line naming the extra,
    not a ModuleNotFoundError traceback."""
    import builtins

    from sae_minimal.course import cli

    real_import = builtins.__import__

    def no_nbformat(name, *args, **kw):
        if name.split(".")[0] == "nbformat":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_nbformat)
    assert cli.main(["build", "--check"]) == 2
    err = capsys.readouterr().err
    assert "nbformat is not installed" in err and "pip install -e '.[course]'" in err
