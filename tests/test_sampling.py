"""Choosing the next token (repetition penalty, top-k, top-p) on crafted logits; the key/value cache
gives the same tokens as reading the whole context; stop strings; generate's options checked in the CLI."""

import math

import pytest
import torch

from bigmodel.data.tokenizers import CharTokenizer
from bigmodel.models.gpt import GPT
from bigmodel.models.sampling import keep_top_k, keep_top_p, next_token, penalize_repeats
from bigmodel.models.text_sample import sample_text
from conftest import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest
INF = float("inf")


def logits_of(*probs: float) -> torch.Tensor:
    return torch.tensor([[math.log(p) for p in probs]])  # (1, V)


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens():
    logits = torch.tensor([[2.0, -1.0, 3.0, 0.5]])
    seen = torch.tensor([[0, 1, 1]])  # token 1 twice: penalized once
    assert penalize_repeats(logits, seen, 2.0).tolist() == [[1.0, -2.0, 3.0, 0.5]]
    assert penalize_repeats(logits, seen, 0.5).tolist() == [[4.0, -0.5, 3.0, 0.5]]
    assert penalize_repeats(logits, seen, 1.0) is logits
    # greedy picks token 0 without the penalty, token 2 with it
    assert next_token(torch.tensor([[3.0, 1.0, 2.5]]), torch.tensor([[0]]), temperature=0).item() == 0
    assert (
        next_token(torch.tensor([[3.0, 1.0, 2.5]]), torch.tensor([[0]]), temperature=0, repetition_penalty=1.5).item()
        == 2
    )


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = logits_of(0.1, 0.5, 0.05, 0.3, 0.05)  # sorted: 0.5 (1), 0.3 (3), 0.1 (0), 0.05, 0.05
    kept = lambda p: (keep_top_p(logits, p) > -INF)[0].nonzero().flatten().tolist()  # noqa: E731
    assert kept(0.4) == [1]  # 0.5 alone reaches 0.4
    assert kept(0.7) == [1, 3]  # 0.5 < 0.7: 0.3 is needed too
    assert kept(0.85) == [0, 1, 3]
    assert kept(0.99) == [0, 1, 2, 3, 4]
    assert kept(1e-9) == [1]  # the most likely token always survives
    assert torch.equal(keep_top_p(logits, 1.0), logits)
    survivors = keep_top_p(logits, 0.7)
    assert torch.equal(survivors[0, [1, 3]], logits[0, [1, 3]])  # kept logits are unchanged


def test_top_k_keeps_the_k_largest_and_composes_with_top_p():
    logits = logits_of(0.1, 0.5, 0.05, 0.3, 0.05)
    assert (keep_top_k(logits, 2) > -INF)[0].nonzero().flatten().tolist() == [1, 3]
    assert torch.equal(keep_top_k(logits, 5), logits) and torch.equal(keep_top_k(logits, None), logits)
    # top-k 3 first renormalizes to 0.5/0.9, 0.3/0.9, 0.1/0.9; top-p 0.8 then needs only the first two
    draws = next_token(
        logits.expand(3000, -1),
        torch.empty(3000, 0, dtype=torch.long),
        top_k=3,
        top_p=0.8,
        generator=torch.Generator().manual_seed(0),
    )
    freq = torch.bincount(draws[:, 0], minlength=5).float() / len(draws)
    assert freq[[0, 2, 4]].sum() == 0
    assert abs(freq[1].item() - 0.5 / 0.8) < 0.03  # sampled in proportion among the survivors


def test_sampling_reads_the_temperature_before_top_p():
    logits = logits_of(0.6, 0.3, 0.1)
    hot = next_token(
        logits.expand(2000, -1),
        torch.empty(2000, 0, dtype=torch.long),
        temperature=100.0,
        top_p=0.5,
        generator=torch.Generator().manual_seed(0),
    )
    assert set(hot[:, 0].tolist()) == {0, 1}  # nearly flat after temperature: two tokens reach 0.5


@pytest.mark.parametrize("temperature, penalty", [(1e-320, 1.0), (1e-30, 1.0), (1.0, 1e-320), (1.0, 1e300)])
def test_extreme_temperature_and_penalty_still_give_tokens(temperature, penalty):
    """Values in range, but near the edges of float32: no inf / NaN reaches the softmax."""
    logits = torch.tensor([[3.0, 1.0, 2.5, -4.0]]).expand(50, -1)
    seen = torch.tensor([[1, 3]]).expand(50, -1)
    tokens = next_token(
        logits, seen, temperature=temperature, repetition_penalty=penalty, generator=torch.Generator().manual_seed(0)
    )
    drawn = set(tokens[:, 0].tolist())
    if temperature < 1e-20:  # as cold as greedy: the most likely token, every time
        assert drawn == {0}
    elif penalty < 1:  # seen token 1's positive logit is multiplied up to float32's largest
        assert drawn == {1}
    else:  # seen token 1 goes to ~0 and token 3's negative logit to float32's lowest: never drawn
        assert drawn <= {0, 1, 2} and 0 in drawn


def tiny_gpt(seed: int = 0, block_size: int = 16) -> GPT:
    torch.manual_seed(seed)
    return GPT(vocab_size=13, block_size=block_size, n_layer=2, n_head=2, n_embd=16).eval()


@pytest.mark.parametrize("prompt_len,batch", [(3, 1), (16, 1), (21, 2)])
def test_greedy_with_the_cache_equals_greedy_without_it(prompt_len, batch):
    model = tiny_gpt()
    prompt = torch.randint(0, 13, (batch, prompt_len), generator=torch.Generator().manual_seed(prompt_len))
    # 40 new tokens with block 16: the context overflows (and is cut back) several times
    cached = model.generate(prompt, 40, temperature=0.0, use_cache=True)
    full = model.generate(prompt, 40, temperature=0.0, use_cache=False)
    assert cached.shape == (batch, prompt_len + 40) and torch.equal(cached, full)


def test_cached_logits_equal_full_context_logits_and_sampling_is_reproducible():
    model = tiny_gpt(seed=1)
    idx = torch.randint(0, 13, (2, 16), generator=torch.Generator().manual_seed(0))
    cache = model.new_cache()
    steps = [model(idx[:, :5], cache=cache)] + [model(idx[:, t : t + 1], cache=cache) for t in range(5, 16)]
    torch.testing.assert_close(torch.cat(steps, dim=1), model(idx), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="longer than model.block_size=16"):
        model(idx[:, :1], cache=cache)

    def sample(seed, **kw):
        g = torch.Generator().manual_seed(seed)
        return model.generate(idx[:, :3], 30, 1.0, 5, g, top_p=0.9, repetition_penalty=1.2, **kw)

    assert torch.equal(sample(4), sample(4)) and not torch.equal(sample(4), sample(5))
    assert torch.equal(sample(4), sample(4, use_cache=False))


def test_stop_strings_end_the_text_before_them_and_are_never_shown():
    vocab = "abcdefgh\n"
    model, tok = GPT(vocab_size=len(vocab), block_size=32, n_layer=1, n_head=1, n_embd=8), CharTokenizer(vocab)
    args = dict(max_new_tokens=60, temperature=1.0, top_k=None, generator=None, device=torch.device("cpu"))
    full = sample_text(model, tok, "a", **(args | {"generator": torch.Generator().manual_seed(0)}))[1:]
    stop = full[20:22]  # a two-character string the unstopped text holds
    pieces = []
    text = sample_text(
        model,
        tok,
        "a",
        stop=["zz", stop],
        on_text=pieces.append,
        **(args | {"generator": torch.Generator().manual_seed(0)}),
    )
    assert text == "a" + full[: full.index(stop)] and "".join(pieces) == text[1:]
    assert stop not in "".join(pieces)


@pytest.mark.parametrize(
    "override,message",
    [
        ("max_new_tokens=0", "max_new_tokens=0 is not valid: use an integer >= 1"),
        ("temperature=-1", "temperature=-1 is not valid: use a number >= 0 (0 = always the most likely token)"),
        ("top_p=1.5", "top_p=1.5 is not valid: use a number in (0, 1]"),
        ("precision=fp64", "precision='fp64' is not valid: use 32 (float32) or bf16"),
        ("top_k=14", "top_k=14 is larger than this model's vocabulary of 13 tokens: use 1 to 13"),
    ],
)
def test_generate_options_are_checked_in_the_cli(tmp_path, override, message):
    from bigmodel import checkpoint

    model = tiny_gpt()
    cfg = {"model": {"_target_": "bigmodel.models.gpt.GPT", "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 16}}
    checkpoint.save_atomic(
        {
            "format": checkpoint.FORMAT_VERSION,
            "model": model.state_dict(),
            "config": cfg,
            "model_args": {"vocab_size": 13},
            "data": {"tokenizer": {"kind": "char", "chars": "abcdefghijkl\n"}},
        },
        tmp_path / "lm.pt",
    )
    out = run_cli("generate", f"ckpt_path={tmp_path}/lm.pt", override, f"hydra.run.dir={tmp_path}/gen", cwd=tmp_path)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    errors = [line for line in (out.stdout + out.stderr).splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], out.stderr[-2000:]


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("max_new_tokens", -5, "max_new_tokens=-5 is not valid: use an integer >= 1"),
        ("max_new_tokens", 2.5, "max_new_tokens=2.5 is not valid"),
        ("num_samples", 0, "num_samples=0 is not valid: use an integer >= 1"),
        ("temperature", "abc", "temperature='abc' is not valid: use a number >= 0"),
        ("temperature", float("nan"), "temperature=nan is not valid"),
        ("top_k", 0, "top_k=0 is not valid: use null (no limit) or an integer from 1"),
        ("top_p", 0.0, "top_p=0.0 is not valid: use a number in (0, 1]"),
        ("repetition_penalty", 0, "repetition_penalty=0 is not valid: use a number > 0"),
        ("stop", [""], "stop=[''] is not valid: use a non-empty string or a list of them"),
        ("stop", 5, "stop=5 is not valid"),
        ("cache", "maybe", "cache='maybe' is not valid: use true"),
        ("precision", 16, "precision=16 is not valid: use 32 (float32) or bf16"),
        ("ckpt_path", None, "ckpt_path is required"),
    ],
)
def test_every_generate_option_is_checked_before_loading(key, value, message):
    from omegaconf import OmegaConf

    from bigmodel.config import ConfigError
    from bigmodel.generate import check_options

    good = dict(
        ckpt_path="x.pt",
        max_new_tokens=5,
        temperature=0.8,
        top_k=None,
        top_p=1.0,
        repetition_penalty=1.0,
        stop=[],
        cache=True,
        num_samples=1,
        seed=0,
        device="cpu",
        precision=32,
        num_threads=1,
    )
    check_options(OmegaConf.create(good))
    with pytest.raises(ConfigError) as e:
        check_options(OmegaConf.create(good | {key: value}))
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_a_gpu_is_one_line():
    from bigmodel.config import ConfigError
    from bigmodel.generate import resolve_device

    with pytest.raises(ConfigError, match="device=cuda, but torch sees no CUDA GPU here: use device=cpu"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="device='gpu' is not valid: use auto, cpu or cuda"):
        resolve_device("gpu")


def test_prompt_and_prompt_file_together_are_refused():
    from omegaconf import OmegaConf

    from bigmodel.config import ConfigError
    from bigmodel.generate import check_options

    cfg = dict(ckpt_path="x.pt", max_new_tokens=5, temperature=0.8, top_k=None, top_p=1.0, repetition_penalty=1.0)
    cfg |= dict(stop=[], cache=True, num_samples=1, seed=0, device="cpu", precision=32, num_threads=1)
    check_options(OmegaConf.create(cfg | {"prompt": "\n", "prompt_file": "in.txt"}))  # the default prompt: fine
    with pytest.raises(ConfigError, match="give prompt= or prompt_file=, not both"):
        check_options(OmegaConf.create(cfg | {"prompt": "hello", "prompt_file": "in.txt"}))
