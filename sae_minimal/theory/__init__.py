"""The chapter's theory, with no SAE in it (notebooks 01-02).

    toy       Elhage et al. (2022) toy models of superposition: training, phase diagrams
    capacity  how many nearly-orthogonal directions fit in d dimensions: Welch,
              Kabatyanskii-Levenshtein
"""
