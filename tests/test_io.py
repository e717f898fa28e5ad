"""SAELens-format checkpoints: our round trip, SAELens loading ours, us loading SAELens's, and clear
errors for every way a checkpoint can be wrong."""

import json

import pytest
import torch

import sae_minimal as sm
from sae_minimal import CheckpointError, load_sae, save_sae

# These SAEs read no language model and some have decoder rows off unit norm: save_sae's warnings
# that SAELens could not splice / fold them are expected here (tests/test_sae_lens_interop.py
# tests them).
pytestmark = pytest.mark.filterwarnings("ignore::sae_minimal.io.InteropWarning")

VARIANTS = [
    (sm.ReLUSAE, {}), (sm.TopKSAE, {"k": 4}), (sm.JumpReLUSAE, {}), (sm.GatedSAE, {}),
    (sm.BatchTopKSAE, {"k": 4}), (sm.MatryoshkaSAE, {"k": 4, "prefix_sizes": [4, 8]}),
    (sm.MatryoshkaTopKSAE, {"k": 4}),
]


def _trained_like(cls, kw, seed=0):
    sae = cls(8, 24, seed=seed, **kw)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.2 * torch.randn_like(p))
        if isinstance(sae, sm.BatchTopKSAE):
            sae.threshold.fill_(0.3)
    return sae.eval()


@pytest.mark.parametrize("cls,kw", VARIANTS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_round_trip(cls, kw, tmp_path):
    sae = _trained_like(cls, kw)
    save_sae(sae, tmp_path / "ckpt")
    loaded = load_sae(tmp_path / "ckpt")
    assert type(loaded) is cls and loaded.config() == sae.config()
    x = torch.randn(16, 8)
    torch.testing.assert_close(loaded.encode(x), sae.encode(x))
    torch.testing.assert_close(loaded(x).x_hat, sae(x).x_hat)


def test_refuses_to_overwrite(tmp_path):
    a, b = _trained_like(sm.TopKSAE, {"k": 2}, seed=0), _trained_like(sm.TopKSAE, {"k": 2}, seed=1)
    save_sae(a, tmp_path)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_sae(b, tmp_path)
    torch.testing.assert_close(load_sae(tmp_path).W_dec, a.W_dec)   # nothing was lost
    save_sae(b, tmp_path, overwrite=True)
    torch.testing.assert_close(load_sae(tmp_path).W_dec, b.W_dec)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.json", "sae_weights.safetensors"]


def test_missing_folder_and_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="No SAE checkpoint at"):
        load_sae(tmp_path / "nope")
    save_sae(_trained_like(sm.ReLUSAE, {}), tmp_path)
    (tmp_path / "sae_weights.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="sae_weights.safetensors is missing"):
        load_sae(tmp_path)


def test_truncated_weights(tmp_path):
    save_sae(_trained_like(sm.ReLUSAE, {}), tmp_path)
    f = tmp_path / "sae_weights.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="sae_weights.safetensors could not be read"):
        load_sae(tmp_path)


def test_corrupt_config(tmp_path):
    save_sae(_trained_like(sm.ReLUSAE, {}), tmp_path)
    (tmp_path / "cfg.json").write_text('{"architecture": "standard", "d_in": 8,')
    with pytest.raises(CheckpointError, match="cfg.json is not valid JSON"):
        load_sae(tmp_path)


def test_unknown_architecture(tmp_path):
    save_sae(_trained_like(sm.ReLUSAE, {}), tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    cfg["architecture"] = "transcoder"
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="architecture 'transcoder'"):
        load_sae(tmp_path)


def test_shape_mismatch(tmp_path):
    save_sae(_trained_like(sm.ReLUSAE, {}), tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    cfg["d_sae"] = 32
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"W_enc has shape \(8, 24\).*should be \(8, 32\)"):
        load_sae(tmp_path)


# --- SAELens interoperability ---------------------------------------------------------------------
sae_lens = pytest.importorskip("sae_lens")


@pytest.mark.parametrize("cls,kw", VARIANTS[:4], ids=lambda v: getattr(v, "__name__", str(v)))
def test_sae_lens_loads_what_we_save(cls, kw, tmp_path):
    sae = _trained_like(cls, kw)
    save_sae(sae, tmp_path)
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path))
    x = torch.randn(16, 8)
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(x), sae.encode(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(theirs.decode(sae.encode(x)), sae.decode(sae.encode(x)))


def test_sae_lens_loads_our_batchtopk_as_jumprelu(tmp_path):
    sae = _trained_like(sm.BatchTopKSAE, {"k": 4})
    save_sae(sae, tmp_path)
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path))
    x = torch.randn(16, 8)
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(x), sae.encode(x), rtol=1e-5, atol=1e-5)


def _sae_lens_sae(arch):
    from sae_lens.saes.gated_sae import GatedSAE, GatedSAEConfig
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig
    cls, cfg = {"standard": (StandardSAE, StandardSAEConfig(d_in=8, d_sae=24)),
                "topk": (TopKSAE, TopKSAEConfig(d_in=8, d_sae=24, k=5)),
                "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig(d_in=8, d_sae=24)),
                "gated": (GatedSAE, GatedSAEConfig(d_in=8, d_sae=24))}[arch]
    sae = cls(cfg)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(0.3 * torch.randn_like(p) + (0.2 if p.ndim == 1 else 0.0))
    return sae


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu", "gated"])
def test_we_load_what_sae_lens_saves(arch, tmp_path):
    theirs = _sae_lens_sae(arch)
    theirs.save_model(str(tmp_path))
    ours = load_sae(tmp_path)
    assert ours.architecture == arch
    x = torch.randn(16, 8)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), theirs.encode(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.decode(ours.encode(x)), theirs.decode(theirs.encode(x)),
                                   rtol=1e-5, atol=1e-5)
