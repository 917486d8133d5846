"""The explorer: unsteered and DSPA generations side by side, and which latents were edited per token.

``explorer(world, cdmap)`` returns an ipywidgets UI (prompt, mode, k, alpha); ``compare_html`` is
the static rendering the book shows for one setting.
"""

from __future__ import annotations

import html

from ..method.dspa import DSPA
from ..method.generation import generate

__all__ = ["steered_trace", "compare_html", "explorer"]


def steered_trace(world, cdmap, prompt: str, mode: str, k: int, alpha: float, seed: int = 0,
                  max_new_tokens: int = 60) -> dict:
    """Generate once unsteered and once with DSPA (same seed) and record the edited latents per token."""
    steerer = DSPA(world.model, world.tokenizer, world.sae_in, world.sae_out, cdmap, mode, k, alpha)
    steerer.record = True
    steered = steerer.generate([prompt], max_new_tokens=max_new_tokens, seed=seed)[0]
    plain = generate(world.model, world.tokenizer, [prompt], max_new_tokens=max_new_tokens, seed=seed)[0]
    calls = steerer.last_edit.trace  # call 0: the last prompt position; call i + 1: generated token i
    edited = [sorted(c[0, -1].nonzero().flatten().tolist()) for c in calls]
    ids = world.tokenizer(steered, add_special_tokens=False).input_ids  # re-encoded: one entry per model token
    tokens = [world.tokenizer.decode([i]) for i in ids]
    return {"prompt": prompt, "unsteered": plain, "dspa": steered, "at_last_prompt_position": edited[0] if edited else [],
            # the edit at a position changes the prediction of the *next* token
            "per_token": [(tok, edited[i + 1] if i + 1 < len(edited) else []) for i, tok in enumerate(tokens)],
            "judge_unsteered": world.judge(prompt, plain), "judge_dspa": world.judge(prompt, steered)}


def compare_html(trace: dict, style_of: dict[int, str] | None = None) -> str:
    """Side-by-side HTML: the two generations with their judged style, and edited latents per token."""
    style_of = style_of or {}

    def verdict(v) -> str:
        return f"dominant style <b>{v.style}</b>, preferred share {v.preferred_share:.2f}, fluency {v.fluency:.2f}"

    cells = []
    for tok, lat in trace["per_token"]:
        tip = ", ".join(f"{k} ({style_of.get(k, '?')})" for k in lat[:8]) or "no edit"
        shade = min(1.0, len(lat) / 12)
        cells.append(f'<span title="{html.escape(tip)}" style="background: rgba(76,114,176,{shade:.2f}); '
                     f'padding: 1px 2px; margin: 1px; border-radius: 3px">{html.escape(tok)}'
                     f'<sub style="color:#555">{len(lat) or ""}</sub></span>')
    return (f"<div style='font-family: sans-serif; font-size: 13px'><p><b>prompt</b>: {html.escape(trace['prompt'])}</p>"
            "<table style='width:100%; table-layout:fixed'><tr><th>unsteered</th><th>DSPA</th></tr>"
            f"<tr><td style='vertical-align:top'>{html.escape(trace['unsteered'])}<br><i>"
            f"{verdict(trace['judge_unsteered'])}</i></td><td style='vertical-align:top'>{html.escape(trace['dspa'])}"
            f"<br><i>{verdict(trace['judge_dspa'])}</i></td></tr></table>"
            "<p><b>DSPA, token by token</b> (shade and subscript: latents edited at that position, which steer the "
            f"next token; hover for ids and styles):</p><p style='line-height: 2'>{' '.join(cells)}</p></div>")


def explorer(world, cdmap, prompts: list[str] | None = None, style_of: dict[int, str] | None = None):
    """An ipywidgets explorer over prompt, mode, k and alpha: ``display()`` it in a live kernel (Colab, Jupyter).

    The last child is an ``HTML`` widget holding :func:`compare_html` for the current setting."""
    import ipywidgets as w

    prompts = prompts or world.prompts("test", 12)
    ui = {"prompt": w.Dropdown(options=prompts, description="prompt", layout=w.Layout(width="95%")),
          "mode": w.ToggleButtons(options=["ablate", "augment", "both"], value="augment", description="mode"),
          "k": w.IntSlider(value=64, min=0, max=256, step=8, description="k"),
          "alpha": w.FloatSlider(value=6.0, min=0.0, max=12.0, step=0.5, description="alpha"),
          "seed": w.IntText(value=0, description="seed")}
    view = w.HTML()

    def update(_=None):
        t = steered_trace(world, cdmap, ui["prompt"].value, ui["mode"].value, ui["k"].value, ui["alpha"].value,
                          ui["seed"].value)
        view.value = compare_html(t, style_of)

    for control in ui.values():
        control.observe(update, names="value")
    update()
    return w.VBox([*ui.values(), view])
