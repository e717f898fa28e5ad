"""The course tooling: build exercises from solutions, run every notebook, self-grade an exercise
notebook.

    python -m sae_minimal.course build            # solutions/ -> exercises/ (stubs) and
                                                  # notebooks/ (reading copy)
    python -m sae_minimal.course run [--fast]     # execute notebooks/ in order, print a
                                                  # status/runtime table
    python -m sae_minimal.course check exercises/03_l1_shrinkage.ipynb   # which checkers pass,
                                                                         # one line each
    python -m sae_minimal.course execute solutions/00_introduction.ipynb  # re-execute in place
                                                                          # (maintainers)
    python -m sae_minimal.course demo [--tokens N]  # a first SAE on synthetic data
                                                    # (= python -m sae_minimal.course.demo)
    python -m sae_minimal.course nbgrader DIR [00 02 ...]  # an nbgrader course directory:
                                                # DIR/source/NN_name/ + DIR/nbgrader_config.py

One source of truth: the solution notebooks in ``solutions/``, written with nbgrader's markers.

    # HINT: ...                   (above the block: kept in the exercise, by nbgrader too)
    ### BEGIN SOLUTION            (in code or Markdown cells)
    ### END SOLUTION
    ### BEGIN HIDDEN TESTS        (removed from the exercise entirely)
    ### END HIDDEN TESTS

``build`` writes ``exercises/`` (each solution block replaced by a stub, outputs cleared) and
``notebooks/`` (markers stripped, outputs kept). A marker may vary in case, spacing and number of
``#`` and carry a note (``## begin solution (part a)``); any other line that mentions a marker, an
unclosed or unmatched block, or an unreadable notebook stops the build before anything is written.
``SAE_MINIMAL_FAST=1`` (``run --fast``) asks notebooks for shorter training.

Each checker call is a cell of its own after the exercise, a locked nbgrader test cell with points,
so ``nbgrader autograde`` grades the exercises. The ``nbgrader`` command sets up a course
directory for it, with teacher/nbgrader_config.py (README.md, "For teachers").

``check`` grades against the solution notebook of the same name: every checker the solution calls
must be called and pass, so deleting a checker's cell cannot turn into "all checks passed". Every
cell has a time limit (``--timeout``, default 20 minutes: the full-mode notebooks' longest cell
takes up to ~15 minutes on 2 cores). ``execute`` saves notebooks ready to read anywhere
(``render.clean_for_commit``: no widget outputs, nbval directives in cell tags).

The work is done in ``build.py`` (build) and ``runner.py`` (run, execute, check); this file is the
command line.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .build import CourseError, build, course_root, nbgrader_course
from .render import clean_for_commit
from .runner import CELL_TIMEOUT_S, check, execute, print_check, run

__all__ = ["main", "build", "check", "execute", "run", "CourseError"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sae_minimal.course", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="regenerate exercises/ and notebooks/ from solutions/")
    b.add_argument("--check", action="store_true",
                   help="only report what is out of date (exit 1 if any)")
    r = sub.add_parser("run", help="execute every notebook in order and print a status table")
    r.add_argument("--fast", action="store_true",
                   help="short training (SAE_MINIMAL_FAST=1), as CI does")
    r.add_argument("--dir", default=None, help="folder of notebooks (default: notebooks/)")
    c = sub.add_parser("check", help="execute an exercise notebook and report each checker")
    c.add_argument("notebook")
    c.add_argument("--fast", action="store_true")
    e = sub.add_parser("execute", help="re-execute notebooks in place, keeping their outputs")
    e.add_argument("notebooks", nargs="+")
    e.add_argument("--fast", action="store_true")
    e.add_argument("--online", action="store_true",
                   help="let the notebooks download GPT-2 small (default: offline, the stand-in, "
                        "as CI and offline readers run them)")
    e.add_argument("--threads", type=int, default=1,
                   help="torch threads in the kernel (default 1, as the committed copies were "
                        "executed: another count sums in another order and moves third decimals)")
    for parser in (r, c, e):
        parser.add_argument("--timeout", type=int, default=CELL_TIMEOUT_S, metavar="SECONDS",
                            help=f"stop a cell that runs longer (default {CELL_TIMEOUT_S})")
    sub.add_parser("demo", help="train a first SAE on synthetic data (under a minute)",
                   add_help=False)
    g = sub.add_parser("nbgrader", help="set up an nbgrader course directory from solutions/")
    g.add_argument("directory")
    g.add_argument("notebooks", nargs="*", metavar="NN",
                   help="only these notebooks (00, 02 or 00_introduction; default: all)")
    g.add_argument("--force", action="store_true",
                   help="overwrite source notebooks that differ from solutions/")
    args, rest = ap.parse_known_args(argv)
    if args.cmd == "demo":
        from .demo import main as demo
        demo(rest)
        return 0
    if rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    if getattr(args, "timeout", 1) <= 0:
        ap.error(f"--timeout must be a positive number of seconds, got {args.timeout}")
    try:
        return _command(args)
    except CourseError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        extra = EXTRAS.get((err.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"error: {err.name} is not installed: this command needs the {extra} extra. "
              f"Install it with: pip install -e '.[{extra}]' (or '.[dev]', which includes it).",
              file=sys.stderr)
        return 2


# The packages these commands import, by the extra of pyproject.toml that installs them
EXTRAS = {"nbformat": "course", "nbclient": "course", "ipykernel": "course",
          "jupyter_client": "course", "nbgrader": "teacher"}


def _command(args) -> int:
    if args.cmd == "build":
        stale = build(check_only=args.check)
        print("\n".join(stale) if stale else "exercises/ and notebooks/ are up to date")
        return 1 if (args.check and stale) else 0
    if args.cmd == "nbgrader":
        target = Path(args.directory)
        written = nbgrader_course(target, names=args.notebooks, force=args.force)
        print("\n".join(map(str, written)) if written else f"{target} is up to date")
        return 0
    if args.cmd == "run":
        folder = Path(args.dir) if args.dir else course_root() / "notebooks"
        return 1 if run(folder, args.fast, args.timeout) else 0
    if args.cmd == "check":
        path = Path(args.notebook)
        if not path.is_file():
            raise CourseError(f"{path} does not exist.")
        return print_check(path, args.fast, args.timeout)
    if args.cmd == "execute":
        import nbformat
        # the committed copies are the offline course: a run that tries the hub first would save
        # retry messages and a fallback banner (or GPT-2's numbers, which CI cannot reproduce)
        if not args.online:
            os.environ["SAE_MINIMAL_OFFLINE"] = "1"
        # and they show their figures: an inherited MPLBACKEND=Agg (the tests' setting) would
        # leave every plotting cell without its image
        os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
        # and their numbers are reproducible at one thread count only (the prose quotes them)
        if args.threads < 1:
            raise CourseError(f"--threads {args.threads}: give 1 or more.")
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)
        for nb_path in map(Path, args.notebooks):
            t0 = time.perf_counter()
            executed = execute(nb_path, fast=args.fast, timeout=args.timeout)
            nbformat.write(clean_for_commit(executed), nb_path)
            print(f"{nb_path}: executed in {time.perf_counter() - t0:.1f}s")
        return 0
    return 2
