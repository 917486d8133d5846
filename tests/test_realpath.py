"""The real-model path, offline: profiles -> models.load -> load_sae -> fit_cdmap -> DSPA -> evals.

Tiny random-weight Gemma-2 and Qwen-3 checkpoints and SAEs in the hub's and sae-lens's exact layouts
(``tests/hubfixtures.py``) stand in for the downloads; the real profiles load them through
``Profile.with_paths`` (or by hub id from a pre-filled cache) and the very functions that load
the real weights. Only the sizes (layers, width) of the profiles are replaced.
"""

from __future__ import annotations

import dataclasses
import types

import hubfixtures as hf
import pytest
import torch

import dspa_lite
from dspa_lite.evaluation.evals import text_metrics
from dspa_lite.loading import models
from dspa_lite.loading.data import load_preferences
from dspa_lite.loading.hub import ModelLoadError
from dspa_lite.loading.profiles import PROFILES, ConfigError, Profile, get_profile, registry_ids
from dspa_lite.method.dspa import LatentEdit
from dspa_lite.method.features import encode_texts, prompt_features
from dspa_lite.method.hooks import edit
from dspa_lite.method.saes import sae_id, sae_layer

ARCHS = {"gemma": ("gemma-2-2b-it", hf.gemma2_checkpoint, "Gemma2ForCausalLM"),
         "qwen": ("qwen3-8b", hf.qwen3_checkpoint, "Qwen3ForCausalLM")}
L_IN, L_OUT = 1, 2


def shrunk(name: str):
    """The real profile ``name`` with the fixtures' sizes: same model id, SAE release and id template."""
    return dataclasses.replace(get_profile(name), n_layers=hf.N_LAYERS, d_model=hf.D_MODEL, d_sae=hf.D_SAE,
                               l_in=L_IN, l_out=L_OUT)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """Both checkpoints, their SAEs at L_IN and L_OUT, and an UltraFeedback folder; built once per module."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("hub")
    out = {"data": hf.ultrafeedback_folder(root / "ultrafeedback")}
    for arch, (name, build, _) in ARCHS.items():
        folder = build(root / arch)
        model, tok = models.load(shrunk(name).with_paths(model_path=folder), device="cpu")
        saes = {}
        for layer in (L_IN, L_OUT):
            if arch == "gemma":
                acts = hf.residuals(model, tok, layer)
                saes[layer] = hf.gemma_scope_sae(root / f"{arch}-sae-{layer}", layer, acts=acts, seed=layer)
            else:
                saes[layer] = hf.qwen_scope_sae(root / f"{arch}-sae-{layer}", layer, seed=layer)
        out[arch] = shrunk(name).with_paths(model_path=folder, sae_paths=saes)
    return out


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty Hugging Face cache and HF_HUB_OFFLINE=1, set after import as a notebook would."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


@pytest.mark.parametrize("arch", ARCHS)
def test_end_to_end(hub, arch, monkeypatch):
    from transformers import AutoModelForCausalLM

    profile = hub[arch]
    seen = {}
    original = AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    model, tok, sae_in, sae_out = models.load_all(profile, device="cpu")
    assert type(model).__name__ == ARCHS[arch][2] and model.dtype == torch.float32
    assert seen["trust_remote_code"] is False
    assert seen.get("attn_implementation") == ("eager" if arch == "gemma" else None)
    assert model.config.name_or_path == profile.model_id  # the hub identity, not the local folder
    assert not any(p.requires_grad for p in model.parameters())
    for sae, layer in ((sae_in, L_IN), (sae_out, L_OUT)):
        assert sae.W_dec.dtype == torch.float32
        assert sae_id(sae) == f"{profile.sae_release}/{profile.sae_id(layer)}"
        assert sae_layer(sae) == layer
    assert type(sae_out).__name__ == ("JumpReLUSAE" if arch == "gemma" else "TopKSAE")

    triples = load_preferences(str(hub["data"]), split="train", n=12, seed=0)
    assert len(triples) == 12 and triples[0].meta["score_chosen"] == 8.5
    cdmap = dspa_lite.fit_cdmap(model, tok, sae_in, sae_out, triples)
    assert cdmap.meta["model_id"] == profile.model_id and cdmap.A.shape == (hf.D_SAE, hf.D_SAE)
    assert cdmap.meta["sae_out_id"] == f"{profile.sae_release}/{profile.sae_id(L_OUT)}"
    assert cdmap.A.abs().sum() > 0, "no prompt latent had enough support: the fixture SAEs never fire"

    prompts = [t.prompt for t in load_preferences(str(hub["data"]), split="test")]
    steerer = dspa_lite.DSPA(model, tok, sae_in, sae_out, cdmap, mode="both", k=4, alpha=3.0)
    assert len(steerer.scores(prompts[0])["K_neg"]) == 4
    out = steerer.generate(prompts, max_new_tokens=8, temperature=0)
    assert len(out) == len(prompts) and all(isinstance(o, str) for o in out)
    assert steerer.last_edit.calls >= 1  # the edit hook ran during decoding
    probe = steerer.make_edit(prompts[:1])
    probe.record, probe.every_position = True, True
    with edit(model, L_OUT, probe):
        model(tok(prompts[:1], return_tensors="pt").input_ids)
    assert probe.trace[0].any(), "the edit touched no active latent: the fixture SAEs cannot show steering"
    metrics = text_metrics(out)
    assert set(metrics) >= {"mean_words", "distinct_2", "repetition_rate"}

    # an empty edit (k=0) is the identity: the same text as the unsteered shared generation path
    plain = dspa_lite.generate(model, tok, prompts, max_new_tokens=8, temperature=0)
    assert dspa_lite.DSPA(model, tok, sae_in, sae_out, cdmap, k=0).generate(prompts, 8, temperature=0) == plain


def test_hub_id_from_prefilled_cache(hub, monkeypatch, tmp_path):
    """No path override: the profile's hub id resolves offline from a cache filled as `hf download` leaves it."""
    hf.fill_hub_cache(tmp_path / "cache", "google/gemma-2-2b-it", hub["gemma"].model_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tok = models.load(shrunk("gemma-2-2b-it"), device="cpu")
    assert type(model).__name__ == "Gemma2ForCausalLM" and tok.chat_template == hf.GEMMA_TEMPLATE
    import huggingface_hub.constants as hub_constants

    assert str(tmp_path) not in str(hub_constants.HF_HUB_CACHE)  # the patched constants were restored


def test_offline_and_not_cached(offline):
    with pytest.raises(ModelLoadError, match=r"google/gemma-2-2b is not in the Hugging Face cache .*hf-home.*"
                                             r"HF_HUB_OFFLINE=1.*with_paths"):
        models.load("gemma-2-2b", device="cpu")
    with pytest.raises(ModelLoadError, match=r"google/gemma-scope-2b-pt-res is not in the Hugging Face cache"):
        models.load_sae("gemma-2-2b", 12, device="cpu")


def _raising(exc: BaseException):
    def from_pretrained(*args, **kwargs):
        raise exc

    return from_pretrained


def test_gated_and_out_of_memory(monkeypatch, offline):
    from huggingface_hub.errors import GatedRepoError
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, Gemma2Config

    url = "https://huggingface.co/google/gemma-2-2b/resolve/main/config.json"
    gated = GatedRepoError(f"401 Client Error. Cannot access gated repo for url {url}.",
                           response=types.SimpleNamespace(headers={}, request=None))
    try:  # wrapped the way transformers' cached_file wraps it
        raise OSError(f"You are trying to access a gated repo.\nMake sure to have access to it at {url}") from gated
    except OSError as e:
        wrapped = e
    monkeypatch.setattr(AutoConfig, "from_pretrained", _raising(wrapped))  # config.json is the first file fetched
    with pytest.raises(ModelLoadError, match=r"accept the licence at https://huggingface.co/google/gemma-2-2b, then "
                                             r"log in: notebook_login\(\).*hf auth login.*export_hf_token\(\)"):
        models.load("gemma-2-2b", device="cpu")
    monkeypatch.setattr(AutoConfig, "from_pretrained", lambda *a, **k: Gemma2Config())
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: object())
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained",
                        _raising(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 18.00 GiB")))
    with pytest.raises(ModelLoadError, match=r"out of memory while loading gemma-2-9b.*bfloat16.*width.*'tiny'"):
        models.load("gemma-2-9b", device="cpu")
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", _raising(KeyError("not a loading problem")))
    with pytest.raises(KeyError):  # causes we cannot name pass through unchanged
        models.load("gemma-2-9b", device="cpu")


def test_sae_for_another_model_or_layer(hub, tmp_path):
    wrong_model = hf.gemma_scope_sae(tmp_path / "2b-sae", 20, d_in=2304, d_sae=8)
    with pytest.raises(ModelLoadError, match=r"SAE expects d_in=2304 but layer 20 of gemma-2-9b has hidden size "
                                             r"3584: is it an SAE for another model\? "
                                             r"Did you pass the SAE for gemma-2-2b / gemma-2-2b-it\?"):
        models.load_sae(get_profile("gemma-2-9b").with_paths(sae_paths={20: wrong_model}), 20, device="cpu")
    model, _ = models.load(hub["gemma"], device="cpu")
    narrow = hf.gemma_scope_sae(tmp_path / "narrow", L_IN, d_in=32)
    with pytest.raises(ModelLoadError, match=r"SAE expects d_in=32 but layer 1 of gemma-2-2b-it has hidden size 64"):
        models.load_sae(hub["gemma"].with_paths(sae_paths={L_IN: narrow}), L_IN, model=model)
    swapped = hub["gemma"].with_paths(sae_paths={L_IN: hub["gemma"].sae_path(L_OUT)})
    with pytest.raises(ModelLoadError, match=r"reads layer 2 \(hook 'blocks.2.hook_resid_post'\) but is used at "
                                             r"layer 1: .* Check the layer keys of sae_paths"):
        models.load_sae(swapped, L_IN, model=model)
    with pytest.raises(ModelLoadError, match=r"no SAE at .*missing"):
        models.load_sae(hub["gemma"].with_paths(sae_paths={L_IN: tmp_path / "nothing"}), L_IN)
    with pytest.raises(ModelLoadError, match=r"the local folder .*nothing does not exist"):
        models.load(hub["gemma"].with_paths(model_path=tmp_path / "nothing"))


def test_layer_without_sae_in_registry(offline):
    wide = dataclasses.replace(get_profile("gemma-2-2b"), sae_id_template="layer_{L}/width_1m/canonical")
    assert wide.registry_layers() == [5, 12, 19]
    with pytest.raises(ModelLoadError, match=r"no SAE 'layer_3/width_1m/canonical' in release "
                                             r"'gemma-scope-2b-pt-res-canonical'.*has layers 5, 12, 19"):
        models.load_sae(wide, 3, device="cpu")
    with pytest.raises(ModelLoadError, match=r"layer=26: gemma-2-2b has 26 layers \(0..25\)"):
        models.load_sae("gemma-2-2b", 26, device="cpu")


@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_model_with_fp32_sae(hub, arch):
    profile = hub[arch]
    model, tok, sae_in, sae_out = models.load_all(profile, device="cpu", dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and sae_in.W_dec.dtype == sae_out.W_dec.dtype == torch.float32
    prompts = [t.prompt for t in load_preferences(str(hub["data"]), split="test")]
    u = prompt_features(model, tok, sae_in, L_IN, prompts)
    assert u.dtype == torch.float32 and u.shape == (len(prompts), hf.D_SAE) and u.sum() > 0
    ids = tok(prompts[:1], return_tensors="pt").input_ids
    plain = model(ids).logits
    none = torch.zeros(1, hf.D_SAE, dtype=torch.bool)
    with edit(model, L_OUT, LatentEdit(sae_out, none, none, "both", 3.0, every_position=True)):
        assert torch.equal(model(ids).logits, plain)  # an empty edit is the identity, in bf16 too
    every = torch.ones(1, hf.D_SAE, dtype=torch.bool)
    steer = LatentEdit(sae_out, none, every, "augment", 3.0, every_position=True)
    with edit(model, L_OUT, steer):
        steered = model(ids).logits
    assert steered.dtype == torch.bfloat16 and torch.isfinite(steered).all() and not torch.equal(steered, plain)


def test_profiles_match_the_sae_lens_registry():
    """The four real profiles: documented fields, SAE ids and sizes that sae-lens's own registry confirms."""
    from sae_lens.loading.pretrained_sae_loaders import get_gemma_2_config_from_hf, get_qwen_scope_config_from_hf
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory, get_repo_id_and_folder_name

    directory = get_pretrained_saes_directory()
    assert set(PROFILES) == {"tiny", "gemma-2-2b", "gemma-2-2b-it", "gemma-2-9b", "qwen3-8b"}
    expected = {"gemma-2-2b": ("google/gemma-2-2b", "gemma-scope-2b-pt-res-canonical", "gemma-2-2b"),
                "gemma-2-2b-it": ("google/gemma-2-2b-it", "gemma-scope-2b-pt-res-canonical", "gemma-2-2b"),
                "gemma-2-9b": ("google/gemma-2-9b", "gemma-scope-9b-pt-res-canonical", "gemma-2-9b"),
                "qwen3-8b": ("Qwen/Qwen3-8B", "qwen-scope-3-8b-base-w64k-l100", "Qwen/Qwen3-8B-Base")}
    for name, (model_id, release, sae_model) in expected.items():
        p = get_profile(name)
        assert (p.model_id, p.sae_release, p.dtype) == (model_id, release, "bfloat16")
        assert directory[release].model == sae_model  # the model the SAEs were trained on
        assert p.l_in < p.l_out < p.n_layers and p.l_in >= p.n_layers // 3 and p.l_out >= 2 * p.n_layers // 3
        assert p.registry_layers() == list(range(p.n_layers))  # one SAE per layer: n_layers is right
        assert {p.sae_id(p.l_in), p.sae_id(p.l_out)} <= set(registry_ids(release))
        assert p.est_gpu_memory_gb > 0 and p.est_minutes_a100 and p.est_note and p.sae_note and p.chat_note
        repo, folder = get_repo_id_and_folder_name(release, p.sae_id(p.l_out))
        getter = get_qwen_scope_config_from_hf if "qwen" in name else get_gemma_2_config_from_hf
        cfg = getter(repo, folder, "cpu")  # sae-lens's own converter: builds the config without a download
        assert (cfg["d_in"], cfg["d_sae"]) == (p.d_model, p.d_sae)
        assert str(p.l_out) in cfg["hook_name"] and "resid_post" in cfg["hook_name"]
    assert "Base" in get_profile("qwen3-8b").sae_note and "Base" in get_profile("gemma-2-2b-it").sae_note
    assert get_profile("qwen3-8b").chat_kwargs == {"enable_thinking": False}
    assert "system" in get_profile("gemma-2-2b").chat_note and get_profile("gemma-2-2b").chat_kwargs == {}
    assert get_profile("gemma-2-9b").est_gpu_memory_gb > get_profile("gemma-2-2b").est_gpu_memory_gb


def test_tiny_profile_loads_the_toy_world(hub, monkeypatch):
    """``tiny`` without paths takes everything from dspa_lite.toyworld (stubbed here: building it takes minutes)."""
    model, tok = models.load(hub["gemma"], device="cpu")
    sae_in = models.load_sae(hub["gemma"], L_IN, model=model)
    sae_out = models.load_sae(hub["gemma"], L_OUT, model=model)
    world = types.SimpleNamespace(model=model, tokenizer=tok, sae_in=sae_in, sae_out=sae_out, l_in=L_IN, l_out=L_OUT)
    monkeypatch.setattr(Profile, "builtin_world", lambda self: world)
    tiny = dataclasses.replace(get_profile("tiny"), d_model=hf.D_MODEL)
    assert models.load_all(tiny, device="cpu") == (model, tok, sae_in, sae_out)
    assert models.load_sae(tiny, L_OUT, model=model) is sae_out
    with pytest.raises(ModelLoadError, match=r"the toy world has SAEs at layers 1 and 2 only, not 3"):
        models.load_sae(tiny, 3)


def test_profile_api():
    with pytest.raises(ConfigError, match=r"unknown profile 'gemma-7b'; known profiles: tiny, "):
        get_profile("gemma-7b")
    base = get_profile("gemma-2-2b")
    local = base.with_paths(model_path="~/models/gemma", sae_paths={12: "/s/12"}).with_paths(sae_paths={20: "/s/20"})
    assert base.model_path is None and base.sae_paths == ()  # a copy: the registered profile is unchanged
    assert local.model_path.endswith("models/gemma") and "~" not in local.model_path
    assert (str(local.sae_path(12)), str(local.sae_path(20)), local.sae_path(5)) == ("/s/12", "/s/20", None)
    assert "google/gemma-2-2b" in local.describe()
    with pytest.raises(ValueError, match=r"need 0 <= l_in < l_out < n_layers, got l_in=20, l_out=12"):
        dataclasses.replace(base, l_in=20, l_out=12)
    with pytest.raises(ValueError, match=r"sae_paths has layer 30, but the model has 26 layers"):
        base.with_paths(sae_paths={30: "/s"})
    assert models.resolve_dtype(base, torch.device("cpu")) == torch.float32
    assert models.resolve_dtype(base, torch.device("cpu"), "bfloat16") == torch.bfloat16
    with pytest.raises(ValueError, match=r"dtype='int8' is not a floating-point torch dtype"):
        models.resolve_dtype(base, torch.device("cpu"), "int8")


def test_gemma_trimmed_prompt_content_positions(hub):
    _, tok = models.load(hub["gemma"], device="cpu")
    enc = encode_texts(tok, ["Explain ocean tides.\n"])
    content = tok.decode([enc.ids[0][i] for i in enc.content[0]])
    assert "tides" in content and "<start_of_turn>" not in content


def test_wide_sae_maps_are_factored_and_steer_identically(hub, monkeypatch):
    """Qwen-Scope's 64k SAEs make a dense map larger than the model: above DENSE_MAX_ENTRIES it stays factored."""
    from dspa_lite.method import cdmap as cdmap_module

    model, tok, sae_in, sae_out = models.load_all(hub["qwen"], device="cpu")
    triples = load_preferences(str(hub["data"]), split="train", n=12, seed=0)
    dense = dspa_lite.fit_cdmap(model, tok, sae_in, sae_out, triples)
    monkeypatch.setattr(cdmap_module, "DENSE_MAX_ENTRIES", hf.D_SAE**2 - 1)
    wide = dspa_lite.fit_cdmap(model, tok, sae_in, sae_out, triples)
    assert isinstance(wide.A, cdmap_module.LowRankMap) and wide.A.left.shape == (hf.D_SAE, 12)
    prompts = [t.prompt for t in load_preferences(str(hub["data"]), split="test")]
    runs = [dspa_lite.DSPA(model, tok, sae_in, sae_out, m, mode="both", k=4, alpha=3.0) for m in (dense, wide)]
    torch.testing.assert_close(runs[1].scores(prompts[0])["s"], runs[0].scores(prompts[0])["s"], atol=1e-5, rtol=1e-4)
    assert runs[1].generate(prompts, 8, temperature=0) == runs[0].generate(prompts, 8, temperature=0)
