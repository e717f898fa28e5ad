"""The course's tooling, on top of everything else.

    checks  the exercises' checkers: each explains *what* is wrong, not just that something is
    cli     python -m sae_minimal.course build / run / check / execute / demo
    demo    a first SAE on synthetic data in under a minute

``is_fast()``: whether the course runs in fast mode (``SAE_MINIMAL_FAST=1``, ``course run --fast``,
CI), in which notebooks 03-08 train briefly, as a smoke test.
"""

from ..lm.lab import is_fast

__all__ = ["is_fast"]
