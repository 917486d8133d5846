"""The jaxtyping shape annotations are checked, not decoration: the method's whole path runs on the toy world with
every function of dspa_lite wrapped by ``jaxtyped`` and beartype (jaxtyping's import hook), so a named dimension
that disagrees between arguments and results fails here. Other tests exercise bad input and its error messages,
which a runtime type checker would pre-empt; this one runs the happy path only, in a fresh interpreter."""

import os
import subprocess
import sys
from pathlib import Path

CODE = """
from jaxtyping import install_import_hook
with install_import_hook("dspa_lite", "shapecheck.typechecker"):
    import dspa_lite
    from dspa_lite import DSPA, estimate_map, fit_cdmap, toyworld
    from dspa_lite.method import features
    from dspa_lite.method.baselines import CAA, StaticSAE
    from dspa_lite.method.cdmap import prompt_scores, select_latents
assert getattr(dspa_lite.method.features.prompt_features, "__wrapped__", None), "the hook did not wrap the package"
w = toyworld.load()
triples = w.triples("train")[:24]
cdmap = fit_cdmap(w.model, w.tokenizer, w.sae_in, w.sae_out, triples)
f = features.triple_features(w.model, w.tokenizer, w.sae_in, w.sae_out, w.l_in, w.l_out, triples)
for kw in ({}, {"estimator": "ridge", "ridge": 1e-3}, {"factored": True}, {"top_r": 8, "center": True}):
    estimate_map(f.U, f.Delta, **kw)
s = prompt_scores(cdmap.A, features.prompt_features(w.model, w.tokenizer, w.sae_in, w.l_in, w.prompts("test", 3)))
select_latents(s, 8)
prompts = w.prompts("test", 3)
for mode in ("ablate", "augment", "both"):
    DSPA(w.model, w.tokenizer, w.sae_in, w.sae_out, cdmap, mode=mode, k=8).generate(prompts, max_new_tokens=6)
DSPA(w.model, w.tokenizer, w.sae_in, w.sae_out, cdmap, k=8, positions="all", gate="none").generate(prompts, max_new_tokens=6)
StaticSAE(w.model, w.tokenizer, w.sae_out, cdmap, k=8).generate(prompts, max_new_tokens=6)
CAA.fit(w.model, w.tokenizer, triples, w.l_out).generate(prompts, max_new_tokens=6)
print("ok")
"""


def test_shape_annotations_hold_on_the_method_path():
    tests = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-4000:]
