"""The relative-reconstruction-bias checker (notebook 04 part 2) passes the package's γ and fails
realistic wrong answers with the hint that names the mistake."""

import pytest

from sae_minimal.course import checks
from sae_minimal.metrics import relative_reconstruction_bias


def fails_with(fn, hint):
    with pytest.raises(AssertionError, match=hint):
        checks.check_reconstruction_bias(fn)


def test_reconstruction_bias(capsys):
    checks.check_reconstruction_bias(lambda x, h, c: relative_reconstruction_bias(x, h, center=c))
    assert capsys.readouterr().out.startswith("PASSED check_reconstruction_bias: γ = 0.70")
    fails_with(lambda x, h, c: relative_reconstruction_bias(x, h), "not around `center`")
    fails_with(lambda x, h, c: 1 / relative_reconstruction_bias(x, h, center=c), "1/γ")
    fails_with(lambda x, h, c: float((h - c).norm(dim=-1).mean() / (x - c).norm(dim=-1).mean()),
               "average lengths")
    fails_with(lambda x, h, c: float((x - c).pow(2).sum() / ((h - c) * (x - c)).sum()),
               "numerator is")
    fails_with(lambda x, h, c: float(((h - c).pow(2).sum(-1) / ((h - c) * (x - c)).sum(-1)).max()),
               "expected γ")
    fails_with(lambda x, h, c: "0.7", "return γ as a float|expected γ")


def test_reconstruction_bias_second_case_names_per_row_and_data_mean():
    """Both pass the uniform case (every row shrunk alike, data centred on `center`) and must fail
    the one where shrinkage varies with the row's length around an offset the data's mean misses."""
    per_row = lambda x, h, c: float((((h - c) ** 2).sum(-1) / ((h - c) * (x - c)).sum(-1)).mean())
    data_mean = lambda x, h, c: relative_reconstruction_bias(x, h, center=x.mean(0))
    for fn in (per_row, data_mean):      # the first case alone cannot tell them from γ
        _, x, h, c = checks._bias_cases()[0]
        assert abs(fn(x, h, c) / relative_reconstruction_bias(x, h, center=c) - 1) < 1e-3
    fails_with(per_row, "one ratio per row")
    fails_with(data_mean, "data's own mean")
