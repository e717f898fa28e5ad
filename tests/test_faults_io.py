"""Fault injection for checkpoints: corrupted, truncated and edited files, and the layouts SAELens
has written over its versions. Every case must either load an SAE that encodes like SAELens (or
like the SAE that was saved), or raise a CheckpointError that names what is wrong."""

import json
import math
import re
import warnings

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import sae_minimal as sm
from sae_minimal import CheckpointError, load_sae, save_sae

# These SAEs read no language model and some have decoder rows off unit norm: save_sae's warnings
# that SAELens could not splice / fold them are expected here (tests/test_sae_lens_interop.py
# tests them).
pytestmark = pytest.mark.filterwarnings("ignore::sae_minimal.io.InteropWarning")

D_IN, D_SAE = 8, 24
X = torch.randn(64, D_IN, generator=torch.Generator().manual_seed(1))


def _trained_like(cls=sm.TopKSAE, kw=None, d_in=D_IN, d_sae=D_SAE):
    """An SAE with weights that are not at their initial values (decoder rows not unit norm)."""
    sae = cls(d_in, d_sae, **({"k": 4} if kw is None else kw))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
        if isinstance(sae, sm.BatchTopKSAE):
            sae.threshold.fill_(0.3)
    return sae.eval()


def _cfg(path):
    return json.loads((path / "cfg.json").read_text())


def _write_cfg(path, cfg):
    (path / "cfg.json").write_text(json.dumps(cfg))


def _assert_names(error: Exception, name: str) -> None:
    """``name`` is a word of the error's text after the file it names (the test's folder name may
    contain any word)."""
    text = re.split(r"(cfg\.json|sae_weights\.safetensors): ", str(error), maxsplit=1)[-1]
    assert re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", text), (name, str(error))


def _assert_same_code(ours, reference, x=X):
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), reference.encode(x), rtol=1e-5, atol=1e-5)


# --- bytes: flipped, truncated, rewritten ---------------------------------------------------------
@pytest.mark.parametrize("mask", [0xFF, 0x01], ids=["byte", "bit"])
def test_every_flipped_byte_of_saved_weights_is_refused_or_harmless(mask, tmp_path):
    """Every byte of the file, flipped in turn: refused, or (a flip in the checksum's own name)
    loads exactly the saved SAE."""
    sae = _trained_like(sm.ReLUSAE, {}, d_in=2, d_sae=3)
    save_sae(sae, tmp_path)
    f = tmp_path / "sae_weights.safetensors"
    data = f.read_bytes()
    harmless = 0
    for i in range(len(data)):
        f.write_bytes(data[:i] + bytes([data[i] ^ mask]) + data[i + 1:])
        try:
            loaded = load_sae(tmp_path)
        except CheckpointError:
            continue
        harmless += 1
        assert all(torch.equal(a, b) for a, b in zip(loaded.parameters(), sae.parameters())), i
    assert harmless <= len("sae_minimal_sha256")


@pytest.mark.parametrize("cls,kw", [(sm.TopKSAE, {"k": 4}), (sm.MatryoshkaSAE, {"k": 4})],
                         ids=["topk", "matryoshka"])
def test_every_flipped_bit_of_cfg_json_is_refused_or_encodes_the_same(cls, kw, tmp_path):
    """cfg.json has no checksum (people edit it by hand), but a flipped bit must not load a
    different SAE: the fields that decide the computation are checked against each other."""
    sae = _trained_like(cls, kw)
    save_sae(sae, tmp_path)
    expected = sae.encode(X)
    f = tmp_path / "cfg.json"
    text = f.read_bytes()
    for i in range(len(text)):
        f.write_bytes(text[:i] + bytes([text[i] ^ 0x01]) + text[i + 1:])
        try:
            loaded = load_sae(tmp_path)
        except CheckpointError:
            continue
        assert torch.equal(loaded.encode(X), expected), text[max(0, i - 20):i + 5]


@pytest.mark.parametrize("text", ["[]", "3", '"cfg"', "null", "\xff\xfe"])
def test_cfg_json_that_is_not_an_object_is_refused(text, tmp_path):
    save_sae(_trained_like(), tmp_path)
    (tmp_path / "cfg.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(CheckpointError, match="cfg.json"):
        load_sae(tmp_path)


def test_weights_truncated_anywhere_are_refused(tmp_path):
    save_sae(_trained_like(), tmp_path)
    f = tmp_path / "sae_weights.safetensors"
    data = f.read_bytes()
    for cut in [*range(0, 16), *range(16, len(data), 37), len(data) - 1]:
        f.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="could not be read"):
            load_sae(tmp_path)


def test_checksum_catches_a_well_formed_but_changed_file(tmp_path):
    save_sae(_trained_like(), tmp_path)
    f = tmp_path / "sae_weights.safetensors"
    with safe_open(str(f), framework="pt") as g:
        header, weights = g.metadata(), {n: g.get_tensor(n) for n in g.keys()}  # noqa: SIM118
    weights["b_dec"][0] += 1e-3
    save_file(weights, str(f), metadata=header)
    with pytest.raises(CheckpointError, match="checksum"):
        load_sae(tmp_path)
    save_file(weights, str(f))  # rewritten without our header (as SAELens's save_model does)
    assert load_sae(tmp_path).b_dec[0] == weights["b_dec"][0]


def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path):
    """A foreign file has no checksum: corrupt values that are NaN/inf (or become inf in the cfg's
    dtype) are still caught."""
    save_sae(_trained_like(sm.JumpReLUSAE, {}), tmp_path)
    f = tmp_path / "sae_weights.safetensors"
    weights = load_file(str(f))
    for name, value, dtype in [("b_enc", math.nan, "float32"), ("W_enc", math.inf, "float32"),
                               ("threshold", math.nan, "float32"), ("W_dec", 1e6, "float16")]:
        bad = {n: t.clone() for n, t in weights.items()}
        bad[name].view(-1)[3] = value
        save_file(bad, str(f))
        _write_cfg(tmp_path, {**_cfg(tmp_path), "dtype": dtype})
        with pytest.raises(CheckpointError, match="NaN/inf") as e:
            load_sae(tmp_path)
        _assert_names(e.value, name)
    save_file({**weights, "b_dec": weights["b_dec"].long()}, str(f))
    with pytest.raises(CheckpointError, match="floating point") as e:
        load_sae(tmp_path)
    _assert_names(e.value, "b_dec")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_round_trip_in_every_dtype_sae_lens_writes(dtype, tmp_path):
    sae = _trained_like().to(dtype)
    save_sae(sae, tmp_path)
    loaded = load_sae(tmp_path)
    assert loaded.W_enc.dtype == dtype
    assert all(torch.equal(a, b) for a, b in zip(loaded.parameters(), sae.parameters()))


def test_unknown_and_missing_tensors_are_refused(tmp_path):
    save_sae(_trained_like(), tmp_path)
    f = tmp_path / "sae_weights.safetensors"
    weights = load_file(str(f))
    save_file({**weights, "W_enc_2": weights["W_enc"].clone()}, str(f))
    with pytest.raises(CheckpointError, match="does not use") as e:
        load_sae(tmp_path)
    _assert_names(e.value, "W_enc_2")
    save_file({n: t for n, t in weights.items() if n != "b_enc"}, str(f))
    with pytest.raises(CheckpointError, match="lacks") as e:
        load_sae(tmp_path)
    _assert_names(e.value, "b_enc")


def test_save_refuses_non_finite_weights(tmp_path):
    sae = _trained_like()
    with torch.no_grad():
        sae.W_dec[2, 1] = math.nan
    with pytest.raises(ValueError, match=r"NaN/inf values in \['W_dec'\]"):
        save_sae(sae, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


# --- cfg.json: each field deleted, retyped, or set to a bad value ---------------------------------
@pytest.mark.parametrize("cls,kw", [(sm.TopKSAE, {"k": 4}), (sm.BatchTopKSAE, {"k": 4}),
                                    (sm.ReLUSAE, {})], ids=["topk", "batchtopk", "relu"])
def test_each_cfg_field_deleted_loads_the_same_sae_or_is_named(cls, kw, tmp_path):
    sae = _trained_like(cls, kw)
    save_sae(sae, tmp_path)
    cfg = _cfg(tmp_path)
    for field in cfg:
        _write_cfg(tmp_path, {k: v for k, v in cfg.items() if k != field})
        try:
            loaded = load_sae(tmp_path)
        except CheckpointError as e:
            _assert_names(e, field)
            continue
        _assert_same_code(loaded, sae)


ODD_VALUES = ["abc", -1, 0, None, [], {}, 3.5, True, False, 10**9]


def test_each_cfg_field_set_to_odd_values_encodes_like_sae_lens_or_is_named(tmp_path):
    """The oracle is SAELens itself: where we load an edited cfg, SAELens must give the same
    encodings (or, where SAELens cannot load it, the saved SAE must)."""
    sae_lens = pytest.importorskip("sae_lens")
    sae = _trained_like()
    save_sae(sae, tmp_path)
    cfg = _cfg(tmp_path)
    for field in cfg:
        for value in ODD_VALUES:
            _write_cfg(tmp_path, {**cfg, field: value})
            try:
                ours = load_sae(tmp_path)
            except CheckpointError as e:
                _assert_names(e, field)
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    reference = sae_lens.SAE.load_from_disk(str(tmp_path))
            except Exception:  # noqa: BLE001 -- SAELens cannot read it: compare with what we saved
                reference = sae
            _assert_same_code(ours, reference)


NAN = float("nan")
BAD_CFG = [  # (field, value, the name the error must give)
    ("d_in", "abc", "d_in"), ("d_in", 8.0, "d_in"), ("d_sae", 0, "d_sae"),
    ("k", -3, "k"), ("k", "4", "k"), ("k", 4.5, "k"), ("k", 25, "k"), ("k", 5, "k"),
    ("dtype", "float99", "dtype"), ("dtype", "int8", "dtype"), ("dtype", "nn", "dtype"),
    ("apply_b_dec_to_input", "yes", "apply_b_dec_to_input"),
    ("rescale_acts_by_decoder_norm", "true", "rescale_acts_by_decoder_norm"),
    ("finetuning_scaling_factor", "no", "finetuning_scaling_factor"),
    ("normalize_activations", "expected_average_only_in", "normalize_activations"),
    ("normalize_activations", True, "normalize_activations"),
    ("normalize_activations", "layer_norm", "normalize_activations"),
    ("normalize_activations", "constant_norm_rescale", "normalize_activations"),
    ("normalize_activations", "covariance_whitening", "normalize_activations"),
    ("reshape_activations", "hook_q", "reshape_activations"),
    ("architecture", "abstopk", "architecture"), ("architecture", "batchtopk", "architecture"),
    ("architecture", "standard", "architecture"), ("architecture", "gated", "architecture"),
    ("activation_fn_str", "tanh-relu", "activation_fn_str"), ("activation_fn", "gelu",
                                                              "activation_fn"),
    ("activation_fn_kwargs", "k=4", "activation_fn_kwargs"),
    ("activation_fn_kwargs", {"k": 5}, "activation_fn_kwargs.k"),
    ("activation_fn_kwargs", {"k": 4, "signed": True}, "activation_fn_kwargs.signed"),
    ("activation_fn_kwargs", {"k": 4, "postact_fn": "tanh"}, "activation_fn_kwargs"),
    ("metadata", "abc", "metadata"),
    ("metadata", {"sae_minimal_class": "TopKSAE", "sae_minimal_config": "k=4"},
     "metadata.sae_minimal_config"),
    ("metadata", {"sae_minimal_class": "ReLUSAE"}, "metadata.sae_minimal_class"),
    ("metadata", {"trained_tokens": "abc"}, "metadata.trained_tokens"),
    ("metadata", {"sae_minimal_class": "TopKSAE", "sae_minimal_config": {"aux_coeff": NAN}},
     "aux_coeff"),
    ("metadata", {"sae_minimal_class": "TopKSAE", "sae_minimal_config": {"k_aux": 0}}, "k_aux"),
    ("metadata", {"sae_minimal_class": "TopKSAE", "sae_minimal_config": {"dead_window": -5}},
     "dead_window"),
    ("metadata", {"sae_minimal_class": "TopKSAE", "sae_minimal_config": {"bogus": 1}}, "bogus"),
]


@pytest.mark.parametrize("field,value,name", BAD_CFG, ids=[f"{f}={v!r}" for f, v, _ in BAD_CFG])
def test_bad_cfg_value_is_a_checkpoint_error_naming_it(field, value, name, tmp_path):
    save_sae(_trained_like(), tmp_path)
    _write_cfg(tmp_path, {**_cfg(tmp_path), field: value})
    with pytest.raises(CheckpointError) as e:
        load_sae(tmp_path)
    _assert_names(e.value, name)
    assert "cfg.json" in str(e.value)


@pytest.mark.parametrize("value", [NAN, -1.0, 0.0], ids=["nan", "negative", "zero"])
def test_bad_jumprelu_threshold_hyperparameters_in_metadata_are_named(value, tmp_path):
    save_sae(_trained_like(sm.JumpReLUSAE, {}), tmp_path)
    cfg = _cfg(tmp_path)
    cfg["metadata"]["sae_minimal_config"]["bandwidth"] = value
    _write_cfg(tmp_path, cfg)
    with pytest.raises(CheckpointError) as e:
        load_sae(tmp_path)
    _assert_names(e.value, "bandwidth")


# --- layouts SAELens wrote before version 6 (cfg.json written by hand as SAELens 5 wrote it) -----
def _sae_lens_5_cfg(**fields):
    return {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "activation_fn_str": "relu",
            "activation_fn_kwargs": {}, "apply_b_dec_to_input": True,
            "finetuning_scaling_factor": False, "context_size": 128, "model_name": "gpt2",
            "hook_name": "blocks.0.hook_resid_pre", "hook_layer": 0, "hook_head_index": None,
            "prepend_bos": True, "dataset_path": "openwebtext", "dataset_trust_remote_code": True,
            "normalize_activations": "none", "dtype": "float32", "device": "cpu",
            "sae_lens_training_version": "5.3.0", "neuronpedia_id": None,
            "model_from_pretrained_kwargs": {}, **fields}


def _standard_weights(d_in=D_IN, d_sae=D_SAE):
    gen = torch.Generator().manual_seed(2)
    return {"W_enc": 0.5 * torch.randn(d_in, d_sae, generator=gen),
            "b_enc": 0.2 * torch.randn(d_sae, generator=gen),
            "W_dec": 0.7 * torch.randn(d_sae, d_in, generator=gen),
            "b_dec": 0.1 * torch.randn(d_in, generator=gen)}


def _write(path, cfg, weights):
    path.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(path / "sae_weights.safetensors"))
    _write_cfg(path, cfg)
    return path


OLD_TOPK = {
    "standard+activation_fn_str": {"activation_fn_str": "topk", "activation_fn_kwargs": {"k": 4}},
    "topk, k only in kwargs": {"architecture": "topk", "activation_fn_str": "topk",
                               "activation_fn_kwargs": {"k": 4}},
    "sparsify-like": {"activation_fn_str": "topk",
                      "activation_fn_kwargs": {"k": 4, "signed": False}},
}


@pytest.mark.parametrize("fields", OLD_TOPK.values(), ids=OLD_TOPK.keys())
def test_sae_lens_5_topk_layouts_load_as_topk_with_their_k(fields, tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    path = _write(tmp_path, _sae_lens_5_cfg(**fields), _standard_weights())
    ours, theirs = load_sae(path), sae_lens.SAE.load_from_disk(str(path))
    assert isinstance(ours, sm.TopKSAE) and ours.k == 4
    assert ((ours.encode(X) != 0).sum(-1) <= 4).all()
    _assert_same_code(ours, theirs)


@pytest.mark.parametrize("fields", [{"activation_fn_str": "topk"},
                                    {"architecture": "topk", "activation_fn_str": "topk"},
                                    {"architecture": "topk", "sae_lens_version": "6.0.0"}],
                         ids=["old-standard", "old-topk", "new-topk"])
def test_topk_layout_without_k_is_refused_not_given_a_default(fields, tmp_path):
    path = _write(tmp_path, _sae_lens_5_cfg(d_sae=64, **fields), _standard_weights(d_sae=64))
    with pytest.raises(CheckpointError) as e:
        load_sae(path)
    _assert_names(e.value, "k")


@pytest.mark.parametrize("fields", [{"k": 4}, {"activation_fn_kwargs": {"k": 4}},
                                    {"architecture": "jumprelu", "k": 4}],
                         ids=["k", "kwargs-k", "jumprelu-k"])
def test_a_k_without_topk_is_refused(fields, tmp_path):
    """A k says TopK, the architecture says otherwise: loading either way could be wrong."""
    weights = {**_standard_weights(), "threshold": torch.zeros(D_SAE)}
    if fields.get("architecture") != "jumprelu":
        del weights["threshold"]
    path = _write(tmp_path, _sae_lens_5_cfg(**fields), weights)
    with pytest.raises(CheckpointError) as e:
        load_sae(path)
    _assert_names(e.value, "architecture")


def test_oldest_layout_without_architecture_and_with_bool_normalization(tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    cfg = _sae_lens_5_cfg(normalize_activations=False, hook_point="blocks.0.hook_resid_pre")
    del cfg["architecture"], cfg["hook_name"]
    path = _write(tmp_path, cfg, _standard_weights())
    ours = load_sae(path)
    assert type(ours) is sm.ReLUSAE
    _assert_same_code(ours, sae_lens.SAE.load_from_disk(str(path)))


def _by_hand_relu(w, x, scale=None):
    """SAELens 5's standard SAE: f = ReLU((x - b_dec) @ W_enc + b_enc),
    x̂ = (f · scale) @ W_dec + b_dec."""
    f = torch.relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
    return f, (f * (1 if scale is None else scale)) @ w["W_dec"] + w["b_dec"]


@pytest.mark.parametrize("name", ["finetuning_scaling_factor", "scaling_factor"])
def test_sae_lens_5_scaling_factor_is_folded_into_the_decoder(name, tmp_path):
    w = _standard_weights()
    scale = 0.5 + torch.rand(D_SAE, generator=torch.Generator().manual_seed(3))
    path = _write(tmp_path, _sae_lens_5_cfg(finetuning_scaling_factor=True), {**w, name: scale})
    ours = load_sae(path)
    f, x_hat = _by_hand_relu(w, X, scale)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(X), f)
        torch.testing.assert_close(ours.decode(ours.encode(X)), x_hat)


def test_scaling_factor_of_ones_is_dropped_like_sae_lens(tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    w = {**_standard_weights(), "scaling_factor": torch.ones(D_SAE)}
    path = _write(tmp_path, _sae_lens_5_cfg(), w)
    ours, theirs = load_sae(path), sae_lens.SAE.load_from_disk(str(path))
    _assert_same_code(ours, theirs)
    with torch.no_grad():
        torch.testing.assert_close(ours.decode(ours.encode(X)), theirs(X))


@pytest.mark.parametrize("scale,name", [(torch.full((D_SAE,), 2.0), "finetuning_scaling_factor"),
                                        (torch.ones(D_SAE + 1), "scaling_factor"),
                                        (torch.full((D_SAE,), NAN), "scaling_factor")],
                         ids=["flag-false", "shape", "nan"])
def test_scaling_factor_that_cannot_be_folded_is_refused(scale, name, tmp_path):
    path = _write(tmp_path, _sae_lens_5_cfg(), {**_standard_weights(), "scaling_factor": scale})
    with pytest.raises(CheckpointError) as e:
        load_sae(path)
    _assert_names(e.value, name)


def test_log_threshold_of_older_jumprelu_training_saves(tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    w = {**_standard_weights(), "threshold": 0.1 + torch.rand(D_SAE)}
    cfg = _sae_lens_5_cfg(architecture="jumprelu")
    theirs = sae_lens.SAE.load_from_disk(str(_write(tmp_path / "new", cfg, w)))
    old = {**w, "log_threshold": w["threshold"].log()}
    del old["threshold"]
    ours = load_sae(_write(tmp_path / "old", cfg, old))
    assert type(ours) is sm.JumpReLUSAE
    _assert_same_code(ours, theirs)


def test_hook_z_sae_encodes_flattened_heads_like_sae_lens(tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    cfg = _sae_lens_5_cfg(hook_name="blocks.0.attn.hook_z")
    path = _write(tmp_path, cfg, _standard_weights())
    ours, theirs = load_sae(path), sae_lens.SAE.load_from_disk(str(path))
    heads = X.reshape(-1, 2, D_IN // 2)  # [B, n_heads, d_head]
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(heads.flatten(-2)), theirs.encode(heads))


def test_model_from_pretrained_kwargs_warns(tmp_path):
    cfg = _sae_lens_5_cfg(model_from_pretrained_kwargs={"center_writing_weights": False})
    with pytest.warns(UserWarning, match="center_writing_weights"):
        load_sae(_write(tmp_path, cfg, _standard_weights()))


# --- what SAELens 6 writes besides plain inference checkpoints ------------------------------------
def _noisy(sae):
    """Random weights with decoder rows of norms far from 1 (what rescaling is about)."""
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(0.4 * torch.randn(p.shape, generator=gen))
        sae.W_dec.mul_(torch.rand(sae.W_dec.shape[0], 1, generator=gen) * 3 + 0.1)
    return sae


def _sae_lens_topk(training: bool, rescale: bool):
    from sae_lens.saes.topk_sae import (TopKSAE, TopKSAEConfig, TopKTrainingSAE,
                                        TopKTrainingSAEConfig)
    cls, cfg_cls = (TopKTrainingSAE, TopKTrainingSAEConfig) if training else (TopKSAE,
                                                                               TopKSAEConfig)
    return _noisy(cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, k=4, rescale_acts_by_decoder_norm=rescale)))


@pytest.mark.parametrize("training,save", [(False, "save_model"), (True, "save_model"),
                                           (True, "save_inference_model")],
                         ids=["inference", "training-checkpoint", "inference-from-training"])
def test_topk_with_rescale_acts_by_decoder_norm_encodes_like_sae_lens(training, save, tmp_path):
    pytest.importorskip("sae_lens")
    theirs = _sae_lens_topk(training, rescale=True)
    getattr(theirs, save)(str(tmp_path))
    assert _cfg(tmp_path)["rescale_acts_by_decoder_norm"] is True
    ours = load_sae(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(X), theirs.encode(X), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.decode(ours.encode(X)), theirs.decode(theirs.encode(X)),
                                   rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.W_dec.norm(dim=-1), torch.ones(D_SAE))  # our unit-norm form


def test_rescale_flag_on_another_architecture_is_refused(tmp_path):
    save_sae(_trained_like(sm.ReLUSAE, {}), tmp_path)
    _write_cfg(tmp_path, {**_cfg(tmp_path), "rescale_acts_by_decoder_norm": True})
    with pytest.raises(CheckpointError) as e:
        load_sae(tmp_path)
    _assert_names(e.value, "rescale_acts_by_decoder_norm")


def _sae_lens_batchtopk():
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    sae = _noisy(BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=4)))
    sae.topk_threshold.fill_(0.2)
    return sae


def test_sae_lens_batchtopk_inference_save_loads_as_jumprelu(tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    _sae_lens_batchtopk().save_inference_model(str(tmp_path))
    ours = load_sae(tmp_path)
    assert type(ours) is sm.JumpReLUSAE
    _assert_same_code(ours, sae_lens.SAE.load_from_disk(str(tmp_path)))


def test_sae_lens_training_checkpoint_is_refused_with_the_way_out(tmp_path):
    pytest.importorskip("sae_lens")
    _sae_lens_batchtopk().save_model(str(tmp_path))
    with pytest.raises(CheckpointError, match="save_inference_model") as e:
        load_sae(tmp_path)
    _assert_names(e.value, "batchtopk")
