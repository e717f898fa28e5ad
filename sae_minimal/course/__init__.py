"""The course's tooling, on top of everything else.

    checks  the exercises' checkers: each explains *what* is wrong, not just that something is
    cli     python -m sae_minimal.course build / run / check / execute / demo
    demo    a first SAE on synthetic data in under a minute
"""
