"""SAEs through sae-lens's own ``SAE.from_pretrained`` converters, offline, from a Hugging Face cache filled with
files in the releases' real layouts: Gemma Scope's ``params.npz`` (converter ``gemma_2``) and Qwen-Scope's
``layer{L}.sae.pt`` (converter ``qwen_scope``). The converters take the SAE's dimensions from the release's
repository id, so the files have the real dimensions: Gemma-2-2B's 2304 x 16k (300 MB), and for Qwen-Scope the
Qwen3-1.7B release (2048 x 32k, 540 MB) with the same layout and converter as the Qwen3-8B profile's (4096 x 64k,
2 GB, too large for a test)."""

from __future__ import annotations

import dataclasses

import hubfixtures as hf
import pytest
import torch

from dspa_lite.loading import models
from dspa_lite.loading.profiles import get_profile
from dspa_lite.method.saes import sae_id, sae_layer


@pytest.fixture
def hub_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hub"


def _repo_and_file(release: str, sid: str) -> tuple[str, str]:
    from sae_lens.loading.pretrained_saes_directory import get_repo_id_and_folder_name

    return get_repo_id_and_folder_name(release, sid)


def test_gemma_scope_from_params_npz(hub_cache):
    profile = get_profile("gemma-2-2b")
    layer = profile.l_out
    repo, folder = _repo_and_file(profile.sae_release, profile.sae_id(layer))
    assert repo == "google/gemma-scope-2b-pt-res" and folder.startswith(f"layer_{layer}/width_16k/average_l0_")
    hf.gemma_scope_params(hf.hub_cache_file(hub_cache, repo, f"{folder}/params.npz"), profile.d_model,
                          profile.d_sae)
    sae = models.load_sae(profile, layer, device="cpu")
    assert type(sae).__name__ == "JumpReLUSAE" and (sae.cfg.d_in, sae.cfg.d_sae) == (2304, 16384)
    assert sae.W_dec.dtype == torch.float32 and float(sae.threshold[0]) == 0.5
    assert sae_id(sae) == f"{profile.sae_release}/{profile.sae_id(layer)}" and sae_layer(sae) == layer
    x = sae.W_dec[:3] * 2  # a decoder row twice over the threshold fires its own latent
    assert (sae.encode(x).argmax(-1) == torch.arange(3)).all()


def test_qwen_scope_from_sae_pt(hub_cache):
    release = "qwen-scope-3-1.7b-base-w32k-l50"
    profile = dataclasses.replace(get_profile("qwen3-8b"), sae_release=release, n_layers=28, d_model=2048,
                                  d_sae=32768, l_in=14, l_out=21)
    repo, filename = _repo_and_file(release, profile.sae_id(profile.l_out))
    assert (repo, filename) == ("Qwen/SAE-Res-Qwen3-1.7B-Base-W32K-L0_50", "layer21.sae.pt")
    assert _repo_and_file(get_profile("qwen3-8b").sae_release, "layer27") == (
        "Qwen/SAE-Res-Qwen3-8B-Base-W64K-L0_100", "layer27.sae.pt")  # the 8B profile's: same layout
    hf.qwen_scope_checkpoint(hf.hub_cache_file(hub_cache, repo, filename), 2048, 32768)
    sae = models.load_sae(profile, profile.l_out, device="cpu")
    assert type(sae).__name__ == "TopKSAE" and sae.cfg.k == 50 and (sae.cfg.d_in, sae.cfg.d_sae) == (2048, 32768)
    assert sae_id(sae) == f"{release}/layer21" and sae_layer(sae) == 21
    x = torch.randn(4, 2048)
    assert ((sae.encode(x) > 0).sum(-1) <= 50).all()
    torch.testing.assert_close(sae.W_dec[:2], sae.W_enc.T[:2])  # the converter transposed both matrices back
