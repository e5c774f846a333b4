"""The GPT model: shapes, causal masking, tied embeddings, init, FLOPs, and sampling."""

import math

import pytest
import torch

from bigmodel.models.gpt import GPT
from bigmodel.optim import param_groups

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest


def tiny_gpt(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    args = dict(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0) | kw
    return GPT(**args).eval()


def test_forward_shape_and_block_size_limit():
    model = tiny_gpt()
    idx = torch.randint(0, 11, (3, 16))
    assert model(idx).shape == (3, 16, 11)
    assert model(idx, last_only=True).shape == (3, 1, 11)
    torch.testing.assert_close(model(idx, last_only=True)[:, 0], model(idx)[:, -1])
    with pytest.raises(ValueError, match="block_size=16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_a_future_token_cannot_change_an_earlier_logit():
    model = tiny_gpt()
    a = torch.randint(0, 11, (2, 16), generator=torch.Generator().manual_seed(1))
    b = a.clone()
    b[:, 9:] = (b[:, 9:] + 1 + torch.randint(0, 9, b[:, 9:].shape)) % 11  # every later token changed
    la, lb = model(a), model(b)
    torch.testing.assert_close(la[:, :9], lb[:, :9], rtol=0, atol=1e-6)
    assert (la[:, 9:] - lb[:, 9:]).abs().max() > 1e-3  # ... while the changed positions do see it


def test_causal_with_dropout_in_training_mode_too():
    model = tiny_gpt(dropout=0.3).train()
    a = torch.randint(0, 11, (2, 16))
    b = a.clone()
    b[:, 12:] = (b[:, 12:] + 3) % 11
    torch.manual_seed(5)
    la = model(a)
    torch.manual_seed(5)
    lb = model(b)
    torch.testing.assert_close(la[:, :12], lb[:, :12], rtol=0, atol=1e-6)


def test_input_and_output_embeddings_are_one_tied_matrix():
    model = tiny_gpt()
    assert model.lm_head.weight is model.tok_emb.weight
    v, c = model.tok_emb.weight.shape
    unique = sum(p.numel() for p in model.parameters())
    assert unique == sum(p.numel() for n, p in model.named_parameters())  # counted once
    assert model.num_params(non_embedding=False) == unique
    assert model.num_params() == unique - 16 * c  # the position table is left out
    # a gradient step moves both "ends" together, and a state dict round trip keeps them tied
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randint(0, 11, (2, 8))).sum().backward()
    opt.step()
    torch.testing.assert_close(model.lm_head.weight, model.tok_emb.weight)
    fresh = tiny_gpt(seed=1)
    fresh.load_state_dict(model.state_dict())
    assert fresh.lm_head.weight is fresh.tok_emb.weight
    torch.testing.assert_close(fresh.tok_emb.weight, model.tok_emb.weight)


def test_weight_decay_only_on_matrices_and_scaled_residual_init():
    model = GPT(vocab_size=64, block_size=32, n_layer=8, n_head=4, n_embd=128)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert any(p is model.tok_emb.weight for p in decay["params"])
    assert any(p is model.ln_f.weight for p in no_decay["params"])
    proj_std = model.blocks[0].attn.proj.weight.std().item()
    qkv_std = model.blocks[0].attn.qkv.weight.std().item()
    assert qkv_std == pytest.approx(0.02, rel=0.05)
    assert proj_std == pytest.approx(0.02 / math.sqrt(2 * 8), rel=0.1)
    assert model.blocks[0].mlp.up.bias.abs().max() == 0


def test_flops_per_token_is_6n_plus_attention():
    model = GPT(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384)
    n = model.num_params()
    assert model.flops_per_token() == 6 * n + 12 * 6 * 6 * 64 * 256
    assert model.flops_per_token(128) == 6 * n + 12 * 6 * 6 * 64 * 128
    assert 10.6e6 < n < 10.8e6  # nanoGPT's reference model: ~10.65 M parameters


def test_overfits_a_repeated_sequence():
    model = tiny_gpt(block_size=16).train()
    seq = torch.tensor([[0, 3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3]])
    x, y = seq[:, :-1], seq[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(80):
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1
    model.eval()
    out = model.generate(seq[:, :4], 12, temperature=0.0)
    assert out[0, :16].tolist() == seq[0, :16].tolist()  # greedy decoding replays what it learned


def test_generation_is_deterministic_with_a_seeded_generator():
    model = tiny_gpt()
    prompt = torch.tensor([[1, 2, 3]])

    def sample(seed):
        return model.generate(prompt, 30, temperature=1.0, top_k=None, generator=torch.Generator().manual_seed(seed))

    torch.manual_seed(123)
    a = sample(7)
    torch.manual_seed(456)  # the global RNG plays no part
    b = sample(7)
    assert a.shape == (1, 33) and torch.equal(a[:, :3], prompt)
    assert torch.equal(a, b)
    assert not torch.equal(a, sample(8))
    # the context is cropped to block_size, so generation may run past it
    assert model.generate(prompt, 40, temperature=0.0).shape == (1, 43)


def test_top_k_one_and_zero_temperature_are_greedy():
    model = tiny_gpt()
    prompt = torch.tensor([[4, 5]])
    greedy = model.generate(prompt, 20, temperature=0.0)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(model.generate(prompt, 20, temperature=1.5, top_k=1, generator=g), greedy)
    assert torch.equal(model.generate(prompt, 20, temperature=1e-4, generator=g), greedy)


@pytest.mark.parametrize("temperature,top_k", [(1.0, None), (0.5, None), (2.0, 3)])
def test_sampling_follows_softmax_of_logits_over_temperature_within_top_k(temperature, top_k):
    model = tiny_gpt(seed=3)
    with torch.no_grad():
        model.tok_emb.weight.mul_(40)  # a peaked, informative next-token distribution
    prompt = torch.tensor([[1, 7, 2]])
    logits = model(prompt)[0, -1] / temperature
    if top_k is not None:
        logits[logits < logits.topk(top_k).values[-1]] = float("-inf")
    expected = torch.softmax(logits, -1)
    n = 4000
    first = next(model.stream(prompt.expand(n, -1), 1, temperature, top_k, torch.Generator().manual_seed(0)))
    freq = torch.bincount(first[:, 0], minlength=11).float() / n
    if top_k is not None:
        assert (freq[expected == 0] == 0).all()  # never outside the k most likely tokens
        assert (freq > 0).sum() <= top_k
    assert (freq - expected).abs().max() < 0.04, (freq, expected)


def test_top_k_holds_at_every_generated_position():
    model = tiny_gpt(seed=4)
    out = model.generate(torch.tensor([[0]]), 15, temperature=2.0, top_k=2, generator=torch.Generator().manual_seed(1))
    logits = model(out[:, :-1])[0]  # (15, V): the logits each new token was drawn from
    ranks = (logits > logits.gather(1, out[0, 1:, None])).sum(1)
    assert (ranks < 2).all()


def test_checkpoints_saved_before_the_gpt2_keys_still_resume():
    from pathlib import Path

    from omegaconf import OmegaConf

    from bigmodel.checkpoint import CheckpointError, check_resumable

    now = OmegaConf.to_container(OmegaConf.load(Path(__file__).parents[1] / "configs" / "model" / "gpt.yaml"))
    before = {k: v for k, v in now.items() if k not in ("init_from", "pretrained_path")}  # an older gpt.yaml
    check_resumable({"config": {"model": before}}, {"model": now}, "last.pt")
    with pytest.raises(CheckpointError, match="model.init_from"):
        check_resumable({"config": {"model": before}}, {"model": now | {"init_from": "gpt2"}}, "last.pt")


def test_init_from_gpt2_without_its_folder_is_one_line_in_the_cli(tmp_path):
    from conftest import run_cli

    (tmp_path / "data" / "text").mkdir(parents=True)
    (tmp_path / "data" / "text" / "a.txt").write_text("to be or not to be\n" * 100)
    out = run_cli(
        "train",
        "model=gpt",
        "model.init_from=gpt2",
        "model.block_size=16",
        "data=text_lm",
        "trainer=debug",
        cwd=tmp_path,
    )
    assert out.returncode != 0 and "Traceback" not in out.stderr and "InstantiationException" not in out.stderr
    errors = [line for line in (out.stdout + out.stderr).splitlines() if "error:" in line]
    assert len(errors) == 1 and "model.init_from=gpt2 needs model.pretrained_path=DIR" in errors[0]
    assert "hf download openai-community/gpt2" in errors[0]
