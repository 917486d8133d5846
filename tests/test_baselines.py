import torch

from dspa_lite import generate
from dspa_lite.method.baselines import CAA, StaticSAE, Unsteered, mean_difference


def test_static_uses_one_global_set(world, cdmap):
    static = StaticSAE(world.model, world.tokenizer, world.sae_out, cdmap, mode="both", k=8)
    d = cdmap.delta_mean / cdmap.delta_std.clamp_min(1e-12)
    assert set(static.K_pos.tolist()) == set(torch.topk(d, 8).indices.tolist())
    assert set(static.K_neg.tolist()) == set(torch.topk(-d, 8).indices.tolist())


def test_unsteered_is_generate(world):
    p = world.prompts("test", 4)
    assert Unsteered(world.model, world.tokenizer).generate(p, max_new_tokens=20, seed=1) == generate(
        world.model, world.tokenizer, p, max_new_tokens=20, seed=1)


def test_caa_zero_multiplier_is_identity_and_vector_is_mean_difference(world):
    triples = world.triples("train")[:8]
    v = mean_difference(world.model, world.tokenizer, triples, world.l_out)
    assert v.shape == (world.model.config.hidden_size,) and v.norm() > 0
    p = world.prompts("test", 3)
    caa0 = CAA(world.model, world.tokenizer, v, world.l_out, multiplier=0.0)
    assert caa0.generate(p, max_new_tokens=20, seed=2) == generate(world.model, world.tokenizer, p, max_new_tokens=20,
                                                                   seed=2)
    caa = CAA(world.model, world.tokenizer, v, world.l_out, multiplier=8.0)
    assert caa.generate(p, max_new_tokens=20, seed=2) != caa0.generate(p, max_new_tokens=20, seed=2)
