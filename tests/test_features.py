import pytest
import torch

from dspa_lite.method.features import encode_texts, pool, prompt_features, triple_features
from dspa_lite.method.hooks import decoder_layers


def test_content_positions_exclude_template(world):
    enc = encode_texts(world.tokenizer, ["hi ! i just baked today ."], ["sounds fun !"])
    words = world.tokenizer.convert_ids_to_tokens(enc.ids[0])
    assert [words[i] for i in enc.content[0]] == "hi ! i just baked today .".split()
    assert [words[i] for i in enc.response[0]] == ["sounds", "fun", "!"]
    assert "<bos>" not in [words[i] for i in enc.prompt_all[0]]
    assert "<start_of_turn>" in [words[i] for i in enc.prompt_all[0]]


def test_one_pass_gives_u_and_v(world):
    triples = world.triples("train")[:6]
    f = triple_features(world.model, world.tokenizer, world.sae_in, world.sae_out, world.l_in, world.l_out, triples)
    u = prompt_features(world.model, world.tokenizer, world.sae_in, world.l_in, [t.prompt for t in triples])
    torch.testing.assert_close(f.U, u)  # causal masking: the response does not change the prompt's features
    assert f.U.shape == (6, world.sae_in.cfg.d_sae) and f.V_pos.shape == (6, world.sae_out.cfg.d_sae)
    assert set(f.U.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(f.Delta, f.V_pos - f.V_neg)


def test_passes_stop_at_l_out(world):
    fired = []
    last = decoder_layers(world.model)[-1]
    handle = last.register_forward_hook(lambda *a: fired.append(1))
    try:
        triple_features(world.model, world.tokenizer, world.sae_in, world.sae_out, world.l_in, world.l_out,
                        world.triples("train")[:2])
    finally:
        handle.remove()
    assert not fired, "layers after l_out must not run while fitting"


def test_response_features_match_a_direct_computation(world):
    t = world.triples("train")[0]
    f = triple_features(world.model, world.tokenizer, world.sae_in, world.sae_out, world.l_in, world.l_out, [t])
    enc = encode_texts(world.tokenizer, [t.prompt], [t.chosen])
    out = world.model(torch.tensor(enc.ids), output_hidden_states=True)
    h = out.hidden_states[world.l_out + 1][0, enc.response[0]]
    torch.testing.assert_close(f.V_pos[0], world.sae_out.encode(h).mean(0), atol=1e-5, rtol=1e-4)


def test_pooling_options():
    z = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]])
    assert pool(z, "max").tolist() == [1.0, 2.0, 0.0]
    with pytest.raises(ValueError, match="pooling='sum'"):
        pool(z, "sum")
