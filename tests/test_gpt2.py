"""GPT-2 weights: a small random GPT-2 saved by `transformers` loads into bigmodel's GPT with the same
logits (safetensors and pytorch_model.bin), generates through the CLI, and bad folders give one line."""

import json

import pytest
import torch

from bigmodel.config import ConfigError
from bigmodel.models.gpt import GPT
from bigmodel.models.gpt2 import load_pretrained, pretrained_tokenizer
from conftest import run_cli

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")
pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest
MERGES = ["he", "Ġt", "Ġthe", "Ġa"]  # a tiny BPE on top of the 256 byte tokens


def gpt2_byte_chars() -> list[str]:
    """GPT-2's printable stand-in for each byte, in its vocabulary order (bytes_to_unicode)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in keep]
    return [chr(b) for b in keep] + [chr(256 + n) for n in range(len(rest))]


def write_vocab(folder) -> int:
    tokens = gpt2_byte_chars() + MERGES + ["<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    return len(tokens)


def hf_gpt2(folder, *, vocab_size: int = 261, n_positions: int = 32, seed: int = 0):
    """A random GPT-2 (GPT2LMHeadModel) of `vocab_size` tokens, saved as model.safetensors in folder."""
    cfg = transformers.GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_embd=32,
        n_layer=2,
        n_head=4,
        bos_token_id=vocab_size - 1,
        eos_token_id=vocab_size - 1,
    )
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # GPT-2's init leaves biases and LayerNorms at 0 / 1: make them count
        for name, p in model.named_parameters():
            if "ln_" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    return model


def test_logits_equal_transformers_from_safetensors(tmp_path):
    ref = hf_gpt2(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    ours = load_pretrained(tmp_path)
    assert (ours.n_layer, ours.n_head, ours.n_embd, ours.block_size) == (2, 4, 32, 32)
    idx = torch.randint(0, 261, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), ref(idx).logits, atol=1e-4, rtol=0)


def test_logits_equal_transformers_from_a_hub_style_pytorch_model_bin(tmp_path):
    ref = hf_gpt2(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    # the hub's original files: no "transformer." prefix, the causal-mask buffers, an explicit (tied) head
    state = {k.removeprefix("transformer."): v for k, v in ref.state_dict().items()}
    state["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 32, 32))
    state["h.0.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, tmp_path / "pytorch_model.bin")
    ours = load_pretrained(tmp_path, block_size=20)  # fewer positions than the checkpoint: the table is cut
    idx = torch.randint(0, 261, (3, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), ref(idx).logits, atol=1e-4, rtol=0)
        ours_cached = ours(idx[:, :12], cache=(cache := ours.new_cache()))
        ours_cached = torch.cat([ours_cached, ours(idx[:, 12:13], cache=cache)], dim=1)
        torch.testing.assert_close(ours_cached, ref(idx[:, :13]).logits, atol=1e-4, rtol=0)


def test_a_pickle_that_is_not_tensors_is_refused_without_running(tmp_path):
    hf_gpt2(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"wte.weight": Payload()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ConfigError, match="pytorch_model.bin: not a tensors-only checkpoint"):
        load_pretrained(tmp_path)
    assert not marker.exists()


def test_model_init_from_gpt2_takes_sizes_from_config_json_and_rebuilds_without_it(tmp_path):
    ref = hf_gpt2(tmp_path, vocab_size=300)
    model = GPT(
        vocab_size=300,
        block_size=16,
        n_layer=6,
        n_head=6,
        n_embd=384,  # sizes replaced by config.json
        init_from="gpt2",
        pretrained_path=str(tmp_path),
    ).eval()
    assert (model.n_layer, model.n_head, model.n_embd, model.block_size) == (2, 4, 32, 16)
    idx = torch.randint(0, 300, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), ref(idx).logits, atol=1e-4, rtol=0)
    again = GPT(vocab_size=300, block_size=16, **model.saved_args)  # what a checkpoint rebuilds: no files read
    again.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(idx), model(idx))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(pretrained_path=None), "needs model.pretrained_path=DIR: .*hf download openai-community/gpt2"),
        (dict(pretrained_path="{tmp}/nowhere"), "has no config.json"),
        (dict(vocab_size=65), "the data's vocabulary has 65 tokens, the checkpoint's 300; use data.tokenizer=bpe"),
        (dict(block_size=64), "model.block_size=64 is longer than the checkpoint's 32 positions"),
        (dict(init_from="gpt2-xl"), "model.init_from=gpt2-xl, but .* 2 layers of width 32"),
        (dict(init_from="gpt3"), "model.init_from='gpt3' is not valid"),
    ],
)
def test_init_from_errors_are_one_line(tmp_path, kwargs, message):
    hf_gpt2(tmp_path, vocab_size=300)
    args = dict(vocab_size=300, block_size=16, init_from="gpt2", pretrained_path=str(tmp_path)) | kwargs
    if args["pretrained_path"]:
        args["pretrained_path"] = args["pretrained_path"].format(tmp=tmp_path)
    with pytest.raises(ConfigError, match=message) as e:
        GPT(**args)
    assert "\n" not in str(e.value)


def test_tokenizer_from_the_folders_vocab_json(tmp_path):
    n = write_vocab(tmp_path)
    tok = pretrained_tokenizer(tmp_path)
    assert tok.vocab_size == n and tok.start_ids() == [n - 1]
    ids = tok.encode(" the heat\n")
    assert ids[0] == n - 3 and ids[2] == n - 5  # " the" and "he" are merged tokens
    assert tok.decode(ids) == " the heat\n"


def test_generate_from_a_gpt2_folder_continues_like_transformers_greedy(tmp_path):
    ref = hf_gpt2(tmp_path, vocab_size=write_vocab(tmp_path))
    tok = pretrained_tokenizer(tmp_path)
    prompt = " the hat"
    ids = torch.tensor([tok.encode(prompt)])
    expected = ref.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)[0, ids.shape[1] :]
    out = run_cli(
        "generate",
        f"ckpt_path={tmp_path}",
        f"prompt={prompt}",
        "max_new_tokens=12",
        "temperature=0",
        "num_samples=1",
        f"hydra.run.dir={tmp_path}/gen",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout == f"--- sample 1/1\n{prompt}{tok.decode(expected.tolist())}\n"


@pytest.mark.slow
def test_train_from_gpt2_weights_then_generate_without_the_folder(tmp_path):
    """The training path end to end, offline: a char corpus and a random GPT-2 of the same vocabulary
    size stand in for GPT-2's BPE and weights (tiktoken's vocabulary would need a download here)."""
    corpus = "the theme of the hat is the heat\n" * 60
    (tmp_path / "data" / "text").mkdir(parents=True)
    (tmp_path / "data" / "text" / "t.txt").write_text(corpus)
    hf_gpt2(tmp_path / "gpt2", vocab_size=len(set(corpus)))
    run = tmp_path / "run"
    out = run_cli(
        "train",
        "model=gpt",
        "model.init_from=gpt2",
        f"model.pretrained_path={tmp_path}/gpt2",
        "model.block_size=16",
        "data=text_lm",
        "trainer=debug",
        "data.batch_size=8",
        "callbacks.text_sample.max_new_tokens=10",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    log = (run / "train.log").read_text()
    assert "model.init_from=gpt2: 2 layers, 4 heads, width 32, block_size 16 of 32 positions" in log
    import shutil

    shutil.rmtree(tmp_path / "gpt2")  # the checkpoint rebuilds the architecture by itself
    gen = run_cli(
        "generate",
        f"ckpt_path={run}/checkpoints/last.pt",
        "prompt=the ",
        "max_new_tokens=20",
        "num_samples=1",
        "stop=zz",
        f"hydra.run.dir={tmp_path}/gen",
        cwd=tmp_path,
    )
    assert gen.returncode == 0, gen.stderr[-3000:]
    assert gen.stdout.startswith("--- sample 1/1\nthe ") and len(gen.stdout.splitlines()[1]) >= 4


def test_broken_weight_files_are_one_line(tmp_path):
    hf_gpt2(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ConfigError, match="model.safetensors: cannot be read"):
        load_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="has neither model.safetensors nor pytorch_model.bin"):
        load_pretrained(tmp_path)
    torch.save({"h.0.ln_1.weight": torch.ones(32)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ConfigError, match="no wte.weight"):
        load_pretrained(tmp_path)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"n_embd": 30, "n_head": 4}, "n_embd=30 is not a multiple of n_head=4"),
        ({"n_layer": 0}, "must be positive"),
        ({"vocab_size": 10**9, "n_embd": 10**6}, "do not belong together"),  # built, that would be 4 PB
        ({"n_layer": 3}, "3 layers"),
    ],
)
def test_a_config_json_that_does_not_fit_its_weights_is_one_line(tmp_path, config, message):
    hf_gpt2(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**saved, **config}))
    with pytest.raises(ConfigError, match=message):
        load_pretrained(tmp_path)


@pytest.mark.parametrize(
    "weights, message",
    [
        ({"h.0": torch.ones(2)}, "not GPT-2 weights"),  # a name without a layer's parameter
        ({"h.0.attn.c_attn.weight": torch.ones(2, 2, 2)}, "not GPT-2 weights"),  # a Conv1D weight of rank 3
    ],
)
def test_weights_of_another_layout_are_one_line(tmp_path, weights, message):
    hf_gpt2(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(
        {"wte.weight": torch.ones(261, 32), "wpe.weight": torch.ones(32, 32), **weights}, tmp_path / "pytorch_model.bin"
    )
    with pytest.raises(ConfigError, match=message):
        load_pretrained(tmp_path)
