"""The lab's cache check: a trained JumpReLU (whose bandwidth training rescales) is recognised as the
SAE its cache key stands for; a changed setting is not."""

import copy

import sae_minimal as sm
from sae_minimal.lm.lab import _mismatch


def test_a_trained_jumprelu_matches_the_sae_it_was_built_as():
    made = sm.JumpReLUSAE(16, 64, l0_coeff=0.3, bandwidth=2.0)
    trained = copy.deepcopy(made)
    trained.fold_input_scale(4.85)            # what train_sae does at the end
    assert trained.config()["bandwidth"] != made.config()["bandwidth"]
    assert _mismatch(trained, made) is None


def test_a_changed_setting_is_still_caught():
    made = sm.JumpReLUSAE(16, 64, l0_coeff=0.3)
    other = sm.JumpReLUSAE(16, 64, l0_coeff=1.0)
    assert "differ from" in _mismatch(other, made)
    assert "differ from" in _mismatch(sm.TopKSAE(16, 64, k=4), sm.TopKSAE(16, 64, k=8))
