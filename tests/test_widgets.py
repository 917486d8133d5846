"""The explorer (chapter 06): its controls regenerate the comparison, and edits line up with model tokens."""

from __future__ import annotations

import pytest

from dspa_lite.notebook.widgets import compare_html, explorer, steered_trace

pytest.importorskip("ipywidgets")


def test_trace_pairs_each_generated_token_with_its_edit(world, cdmap):
    prompt = world.prompts("test", 4)[3]
    t = steered_trace(world, cdmap, prompt, "augment", 64, 6.0, seed=3, max_new_tokens=20)
    ids = world.tokenizer(t["dspa"], add_special_tokens=False).input_ids
    assert [tok for tok, _ in t["per_token"]] == [world.tokenizer.decode([i]) for i in ids]
    assert any(lat for _, lat in t["per_token"]), "no generated token had an edited latent"
    off = steered_trace(world, cdmap, prompt, "augment", 0, 6.0, seed=3, max_new_tokens=20)
    assert off["dspa"] == off["unsteered"] and not any(lat for _, lat in off["per_token"])


def test_explorer_controls_regenerate_the_view(world, cdmap):
    prompts = world.prompts("test", 4)
    ui = explorer(world, cdmap, prompts=prompts, style_of={})
    *controls, view = ui.children
    assert prompts[0] in view.value and "DSPA, token by token" in view.value
    dropdown, k = controls[0], controls[2]
    dropdown.value = prompts[3]
    assert prompts[3] in view.value and prompts[0] not in view.value
    k.value = 0  # no edits: the two columns hold the same text and no token is shaded
    expected = compare_html(steered_trace(world, cdmap, prompts[3], "augment", 0, 6.0), {})
    assert view.value == expected and "<sub style=\"color:#555\"></sub>" in view.value
