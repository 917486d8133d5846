import pytest
import torch

from dspa_lite.loading import config
from dspa_lite.loading.profiles import ConfigError


def test_profile_default_and_unknown(monkeypatch):
    monkeypatch.delenv("DSPA_PROFILE", raising=False)
    monkeypatch.setenv("CI", "true")
    assert config.profile_name() == "tiny"
    monkeypatch.setenv("DSPA_PROFILE", "gemma-3-27b")
    with pytest.raises(ConfigError, match="DSPA_PROFILE='gemma-3-27b' is not a known profile"):
        config.profile_name()


def test_fast_mode(monkeypatch):
    monkeypatch.delenv("DSPA_FAST", raising=False)
    monkeypatch.setenv("CI", "true")
    assert config.fast_mode()
    monkeypatch.delenv("CI")
    assert not config.fast_mode()
    monkeypatch.setenv("DSPA_FAST", "1")
    assert config.fast_mode()
    monkeypatch.setenv("DSPA_FAST", "maybe")
    with pytest.raises(ConfigError, match="DSPA_FAST='maybe'"):
        config.fast_mode()


def test_unwritable_cache(monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("DSPA_CACHE", str(blocker / "cache"))
    with pytest.raises(ConfigError, match="DSPA_CACHE folder .* is not writable"):
        config.cache_dir("toyworld")


def test_cache_dir_created(monkeypatch, tmp_path):
    monkeypatch.setenv("DSPA_CACHE", str(tmp_path / "c"))
    assert config.cache_dir("maps") == tmp_path / "c" / "maps"
    assert (tmp_path / "c" / "maps").is_dir()


def test_device_and_seed():
    assert config.device().type in ("cpu", "cuda", "mps")
    assert config.device("cpu") == torch.device("cpu")
    config.seed_everything(3)
    a = torch.rand(3)
    config.seed_everything(3)
    assert torch.equal(a, torch.rand(3))
