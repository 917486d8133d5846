import json
import subprocess
import sys


def _run(*args, env=None):
    out = subprocess.run([sys.executable, "-m", "dspa_lite.cli", *args], capture_output=True, text=True, env=env)
    return out


def test_build_toy_json_is_the_last_line(world):
    out = _run("build-toy", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("params", "train_loss", "unsteered_preferred_rate", "classifiable_rate", "fluency", "mcq_accuracy",
                "style_latents_active", "sae", "build_info", "load_seconds", "seed", "path"):
        assert key in report
    # the shipped reference world loads instead of being built
    assert report["seed"] == 0 and report["path"].endswith("reference_world")
    assert 0 < report["load_seconds"] < 0.5 * report["build_info"]["build_seconds"]["total_s"]


def test_build_toy_refuses_an_occupied_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    out = _run("build-toy", "--seed", "3", "--out", str(tmp_path))
    assert out.returncode == 5 and "--force" in out.stderr and "Traceback" not in out.stderr
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_fit_generate_eval(world, tmp_path):
    out = _run("fit", "--n", "200", "--out", str(tmp_path / "map"), "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    fitted = json.loads(out.stdout.strip().splitlines()[-1])
    assert fitted["n_triples"] == 200 and (tmp_path / "map" / "cdmap.safetensors").is_file()
    out = _run("generate", "--map", str(tmp_path / "map"), "--prompt", "i love my cat so much !", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    gen = json.loads(out.stdout.strip().splitlines()[-1])["generations"][0]
    assert gen["preferred"] == "friendly" and 0 <= gen["preferred_share"] <= 1
    out = _run("eval", "--methods", "none,dspa", "--n-prompts", "8", "--seeds", "2", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])["methods"]
    for m in ("none", "dspa"):
        for key in ("preferred_share", "win_rate", "fluency", "mcq_accuracy", "stderr", "per_category"):
            assert key in res[m], (m, key)


def test_clear_errors(tmp_path):
    out = _run("generate", "--map", str(tmp_path / "nope"), "--prompt", "hi !")
    assert out.returncode == 4 and "no CDMap folder" in out.stderr and "Traceback" not in out.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b"}\n')
    out = _run("fit", "--triples", str(bad), "--out", str(tmp_path / "m"))
    assert out.returncode == 3 and "line 1" in out.stderr and "rejected" in out.stderr
    out = _run("build-toy", "--seed", "2", env={"DSPA_CACHE": str(bad / "x"), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 6 and "DSPA_CACHE" in out.stderr and "Traceback" not in out.stderr
