"""The weight-updating baselines: DPO moves the preference margin, RAHF-SCIT runs end to end, FLOPs add up."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
from torch import nn

from dspa_lite.evaluation import finetune as ft
from dspa_lite.evaluation import rahf
from dspa_lite.evaluation.flopcount import measure
from dspa_lite.method.hooks import decoder_layers


@pytest.fixture(scope="module")
def triples(world):
    return world.triples("train")[:8]


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before) -> None:
    after = model.state_dict()
    changed = [k for k, v in before.items() if not torch.equal(v, after[k])]
    assert not changed, f"training modified the world's model: {changed[:3]}"
    assert not any(p.requires_grad for p in model.parameters())


def test_dpo_loss_is_log2_at_the_reference_and_falls_with_the_margin():
    z = torch.zeros(3)
    assert ft.dpo_loss(z, z, z, z, beta=0.1).item() == pytest.approx(torch.log(torch.tensor(2.0)).item())
    assert ft.dpo_loss(z + 1, z, z, z, beta=0.1) < ft.dpo_loss(z, z, z, z, beta=0.1) < ft.dpo_loss(z, z + 1, z, z, 0.1)


def test_dpo_increases_the_margin_and_leaves_the_world_model_untouched(world, triples):
    before = snapshot(world.model)
    assert ft.preference_margin(world.model, world.model, world.tokenizer, triples) == 0.0
    method, stats = ft.train_dpo(world.model, world.tokenizer, triples, lr=1e-3, batch_size=8, min_steps=4,
                                 use_trl=False)
    assert stats.steps == 4 and stats.flops > 0 and stats.wall_seconds > 0 and stats.backend == "dspa_lite"
    assert stats.losses[-1] < stats.losses[0]
    assert ft.preference_margin(method.model, world.model, world.tokenizer, triples) > 1.0
    assert method.model is not world.model
    assert_unchanged(world.model, before)
    with method.steer(["hi"]):  # a no-op context: the weights carry the change
        pass


def test_forward_backward_is_three_forwards_and_a_dpo_step_is_four(world, triples):
    rows = [r for pair in ft._pairs(world.tokenizer, triples[:4]) for r in pair]
    batch = ft.collate(rows, world.tokenizer.pad_token_id, world.model.device)
    policy = ft.set_mode(copy.deepcopy(world.model), True, True)
    with torch.no_grad():
        forward = measure(policy, lambda m: ft.response_logps(m, *batch))
    both = measure(policy, lambda m: ft.response_logps(m, *batch).sum().backward())
    assert forward > 0 and both / forward == pytest.approx(3.0, rel=0.02)
    _, stats = ft.train_dpo(world.model, world.tokenizer, triples[:4], batch_size=4, use_trl=False, epochs=1)
    assert stats.steps == 1 and stats.flops / forward == pytest.approx(4.0, rel=0.02)  # policy 3F + reference F


def test_lora_merge_equals_the_adapted_forward():
    torch.manual_seed(0)
    lora = rahf.LoRALinear(nn.Linear(6, 5), rank=2, alpha=4.0)
    x = torch.randn(3, 6)
    assert torch.equal(lora(x), lora.base(x))  # B starts at zero
    nn.init.normal_(lora.B)
    with torch.no_grad():
        adapted = lora(x)
        assert not torch.allclose(adapted, lora.base(x))
        torch.testing.assert_close(lora.merged()(x), adapted, rtol=1e-5, atol=1e-6)


def test_rahf_scit_runs_both_stages_and_changes_only_qv(world, triples):
    before = snapshot(world.model)
    method, stats = rahf.train_rahf_scit(world.model, world.tokenizer, triples, epochs=1, batch_size=4, stage2_steps=3,
                                       stage2_batch=8, stage2_lr=1e-2)
    assert set(stats.stages) == {"stage1", "stage2"}
    assert stats.stages["stage1"]["steps"] == 2 and stats.stages["stage2"]["steps"] == 3
    assert all(s["flops"] > 0 for s in stats.stages.values()) and stats.flops == sum(
        s["flops"] for s in stats.stages.values())
    assert_unchanged(world.model, before)
    merged = method.model
    assert not any(isinstance(m, rahf.LoRALinear) for m in merged.modules()), "the LoRA adapters were not merged"
    layers, base_layers = decoder_layers(merged), decoder_layers(world.model)
    deepest = max(stats.settings["target_layers"])
    for i in range(len(layers)):
        q_changed = not torch.equal(layers[i].self_attn.q_proj.weight, base_layers[i].self_attn.q_proj.weight)
        assert q_changed == (i < deepest), f"layer {i}: LoRA should adapt q/v exactly below hidden_states[{deepest}]"
        assert torch.equal(layers[i].mlp.up_proj.weight, base_layers[i].mlp.up_proj.weight)
    ids = world.tokenizer(["<bos> <start_of_turn> user hi ! i just swam today . <end_of_turn> <start_of_turn> model"],
                          add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        assert (merged(ids).logits - world.model(ids).logits).abs().max() > 1e-3
    assert len(method.generate(world.prompts("test", 2), max_new_tokens=8)) == 2


@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="trl is not installed")
def test_dpo_through_trl_matches_the_loop_in_cost(world, triples):
    before = snapshot(world.model)
    _, trl_stats = ft.train_dpo(world.model, world.tokenizer, triples, batch_size=8, min_steps=2, use_trl=True)
    _, loop_stats = ft.train_dpo(world.model, world.tokenizer, triples, batch_size=8, min_steps=2, use_trl=False)
    assert trl_stats.backend.startswith("trl ") and trl_stats.steps == 2
    assert trl_stats.losses[0] == pytest.approx(0.6931, abs=1e-3)  # the policy starts at the reference
    assert trl_stats.flops == pytest.approx(loop_stats.flops, rel=0.1)  # same passes; TRL pads differently
    assert_unchanged(world.model, before)


def test_dpo_falls_back_to_its_own_loop_without_trl(world, triples, monkeypatch):
    real = ft.importlib.import_module

    def no_trl(name, *args):
        if name == "trl":
            raise ImportError("No module named 'trl'")
        return real(name, *args)

    monkeypatch.setattr(ft.importlib, "import_module", no_trl)
    with pytest.warns(UserWarning, match="trl is not installed"):
        _, stats = ft.train_dpo(world.model, world.tokenizer, triples[:2], batch_size=2)
    assert stats.backend == "dspa_lite" and stats.steps == 1
