"""nbgrader settings for the sae-minimal course. `python -m sae_minimal.course nbgrader DIR` copies
this file into a new nbgrader course directory; if you have your own nbgrader_config.py, copy the
two settings below into it. README.md ("For teachers") has the whole workflow.

What is graded: every coding exercise is followed by a locked test cell that calls its checker
(sae_minimal.course.checks) and carries its points, so `nbgrader autograde` gives the points when
the checker passes and 0, with the checker's explanation in the feedback, when it fails. The
written derivations are graded by hand (2 points each).
"""

import os

c = get_config()  # noqa: F821 -- provided by nbgrader when it loads this file

c.CourseDirectory.course_id = "sae-minimal"

# Per-cell time limit for `nbgrader autograde`, in seconds. nbgrader's default (30 s) interrupts
# the training cells: on 2 CPU cores 01's toy sweeps and 03's 17-SAE sweep take ~30 s each, 04's
# 15-SAE sweep ~12 minutes (full mode, before the lab's cache holds them), 05's ablations ~3
# minutes. The points would not change (each checker tests the function on its own fixed cases),
# but every later cell would work on a half-trained SAE, and the outputs you read next to the
# written answers would be wrong. 1200 s is the limit `python -m sae_minimal.course run` uses.
c.Execute.timeout = 1200

# Short training in notebooks 04-06 (the notebooks' fast mode, as in CI): autograding then takes
# minutes per submission instead of ~15 minutes. The checkers use fixed cases, so the points are
# the same in both modes; only the figures and tables you read differ. For full-length outputs,
# run `SAE_MINIMAL_FAST=0 nbgrader autograde ...`. Kernels that nbgrader starts inherit this
# environment (so does a Jupyter server started in this directory: its notebooks run in fast
# mode too).
os.environ.setdefault("SAE_MINIMAL_FAST", "1")
