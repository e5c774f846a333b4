"""Sampling text: the shared helper, the text-sample callback, `bigmodel generate` in and out of process."""

import math

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bigmodel import checkpoint
from bigmodel.callbacks_lm import TextSample
from bigmodel.cli import quote_free_text
from bigmodel.data.tokenizers import CharTokenizer
from bigmodel.generate import generate
from bigmodel.models.gpt import GPT
from bigmodel.models.text_sample import sample_text
from conftest import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest
ONE_THREAD = {"OMP_NUM_THREADS": "1"}

VOCAB = "\n :ABEMORabcdehilnorstuw"
CORPUS = "ROMEO:\nBut soft, what light through yonder window breaks?\n" * 40


def tiny_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(vocab_size=len(VOCAB), block_size=16, n_layer=1, n_head=2, n_embd=16)


def test_sample_text_streams_the_pieces_it_returns():
    tok, pieces = CharTokenizer(VOCAB), []
    text = sample_text(
        tiny_model(),
        tok,
        "ROMEO:",
        max_new_tokens=25,
        temperature=1.0,
        top_k=None,
        generator=torch.Generator().manual_seed(0),
        device=torch.device("cpu"),
        on_text=pieces.append,
    )
    assert text.startswith("ROMEO:") and len(text) == 6 + 25
    assert "".join(pieces) == text[6:] and len(pieces) == 25  # one piece per token, as produced
    again = sample_text(
        tiny_model(),
        tok,
        "ROMEO:",
        max_new_tokens=25,
        temperature=1.0,
        top_k=None,
        generator=torch.Generator().manual_seed(0),
        device=torch.device("cpu"),
    )
    assert again == text


class Recorder:
    def __init__(self):
        self.texts = []

    def log_text(self, tag, text, step):
        self.texts.append((tag, text, step))


class FakeTrainer:
    """The attributes TextSample reads from a Trainer."""

    def __init__(self, model):
        self.model, self.device, self.is_global_zero, self.global_step = model, torch.device("cpu"), True, 7
        self.logger = Recorder()
        self.datamodule = type("DM", (), {"state_dict": lambda self: {"tokenizer": {"kind": "char", "chars": VOCAB}}})()

    def autocast(self):
        return torch.autocast("cpu", enabled=False)


def test_text_sample_callback_logs_text_without_touching_the_training_rng():
    model = tiny_model().train()
    trainer, cb = FakeTrainer(model), TextSample(prompt="\n", max_new_tokens=30, seed=3, every_n_evals=2)
    state = torch.get_rng_state()
    for _ in range(3):
        cb.on_validation_end(trainer, {"val/loss": 1.0})
    assert torch.equal(torch.get_rng_state(), state) and model.training  # restored to train mode
    assert [(tag, step) for tag, _, step in trainer.logger.texts] == [
        ("val/sample", 7),
        ("val/sample", 7),
    ]  # evals 1, 3
    assert trainer.logger.texts[0][1] == trainer.logger.texts[1][1]  # the same seed: the same sample
    header, body = trainer.logger.texts[0][1].split("\n\n", 1)
    assert header == "sample at step 7 · prompt '\\n' · temperature 0.8 · top_k 200"
    assert 20 <= len(body) <= 30 and not body.startswith("\n")  # the new characters, no leading blank line
    assert cb.state_dict() == {"evals": 3}


def test_text_sample_skips_models_that_do_not_generate():
    classifier = FakeTrainer(torch.nn.Linear(4, 2))
    TextSample(max_new_tokens=5).on_validation_end(classifier, {"val/loss": 1.0})
    no_tokenizer = FakeTrainer(tiny_model())
    no_tokenizer.datamodule = type("DM", (), {"state_dict": lambda self: {"vocab": {}}})()
    TextSample(max_new_tokens=5).on_validation_end(no_tokenizer, {"val/loss": 1.0})
    assert classifier.logger.texts == [] and no_tokenizer.logger.texts == []


def save_lm_checkpoint(path, model):
    cfg = {"model": {"_target_": "bigmodel.models.gpt.GPT", "block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16}}
    checkpoint.save_atomic(
        {
            "format": checkpoint.FORMAT_VERSION,
            "model": model.state_dict(),
            "config": cfg,
            "model_args": {"vocab_size": len(VOCAB)},
            "data": {"tokenizer": {"kind": "char", "chars": VOCAB}},
        },
        path,
    )


def gen_cfg(ckpt, **kw):
    base = dict(
        ckpt_path=str(ckpt),
        prompt="ROMEO:",
        prompt_file=None,
        max_new_tokens=40,
        temperature=0.8,
        top_k=5,
        top_p=1.0,
        repetition_penalty=1.0,
        stop=[],
        cache=True,
        num_samples=2,
        seed=1,
        device="cpu",
        precision=32,
        num_threads=0,
    )
    return OmegaConf.create(base | kw)


def test_generate_is_deterministic_per_seed_and_prints_what_it_returns(tmp_path, capsys):
    save_lm_checkpoint(tmp_path / "lm.pt", tiny_model())
    first = generate(gen_cfg(tmp_path / "lm.pt"))
    out = capsys.readouterr().out
    assert len(first) == 2 and all(s.startswith("ROMEO:") and len(s) == 46 for s in first)
    assert first[0] != first[1]  # one generator across samples
    assert all(s in out for s in first) and "--- sample 2/2" in out
    assert generate(gen_cfg(tmp_path / "lm.pt")) == first
    assert generate(gen_cfg(tmp_path / "lm.pt", seed=2)) != first
    greedy = generate(gen_cfg(tmp_path / "lm.pt", top_k=1, num_samples=2))
    assert greedy[0] == greedy[1]


def test_generate_rejects_bad_prompts_and_non_lm_checkpoints(tmp_path):
    save_lm_checkpoint(tmp_path / "lm.pt", tiny_model())
    from bigmodel.data.errors import DataError

    with pytest.raises(DataError, match="'Z'"):
        generate(gen_cfg(tmp_path / "lm.pt", prompt="ZEBRA"))
    checkpoint.save_atomic(
        {
            "format": checkpoint.FORMAT_VERSION,
            "model": {},
            "config": {},
            "model_args": {},
            "data": {"class_names": ["a", "b"]},
        },
        tmp_path / "cnn.pt",
    )
    with pytest.raises(checkpoint.CheckpointError, match="no tokenizer"):
        generate(gen_cfg(tmp_path / "cnn.pt"))


def test_prompt_is_free_text_on_the_command_line():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    argv = quote_free_text(["prompt=Hello, world: it's [me]", "seed=1"], "prompt")
    assert argv[1] == "seed=1"
    assert OverridesParser.create().parse_override(argv[0]).value() == "Hello, world: it's [me]"


@pytest.mark.slow
def test_train_then_generate_on_a_tiny_corpus(tmp_path):
    (tmp_path / "data" / "text").mkdir(parents=True)
    (tmp_path / "data" / "text" / "play.txt").write_text(CORPUS)
    run_dir = tmp_path / "run"
    out = run_cli(
        "train",
        "model=gpt",
        "data=text_lm",
        "trainer=debug",
        "model.n_layer=1",
        "model.n_head=2",
        "model.n_embd=16",
        "model.block_size=16",
        "data.batch_size=8",
        "callbacks.text_sample.max_new_tokens=20",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        env=ONE_THREAD,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    log = (run_dir / "train.log").read_text()
    assert "model GPT:" in log and "parameters" in log and "val/ppl=" in log and "sample at step 2" in log
    assert list((tmp_path / "cache" / "lm_tokens").glob("play-char-*/tokens.bin"))  # the uint16 cache
    events = EventAccumulator(str(run_dir))  # event files straight in the run folder
    events.Reload()
    assert {"val/loss", "val/ppl", "train/loss"} <= set(events.Tags()["scalars"])
    assert "val/sample" in events.Tags()["tensors"]  # TensorBoard's Text tab, the tag the README names
    value = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in ("val/loss", "val/ppl", "train/loss")}
    assert [s for s, _ in value["train/loss"]] == [1, 2] and [s for s, _ in value["val/loss"]] == [2]
    # a fresh GPT (weights ~N(0, 0.02)) predicts nearly uniformly: the first loss is about ln(vocabulary size)
    assert value["train/loss"][0][1] == pytest.approx(math.log(len(set(CORPUS))), abs=0.15)
    assert value["val/ppl"][0][1] == pytest.approx(math.exp(value["val/loss"][0][1]), rel=1e-4)
    ckpt = checkpoint.load(run_dir / "checkpoints" / "best.pt")
    assert ckpt["data"]["tokenizer"] == {"kind": "char", "chars": "".join(sorted(set(CORPUS)))}
    assert ckpt["progress"]["global_step"] == 2

    args = [
        "generate",
        f"ckpt_path={run_dir}/checkpoints/best.pt",
        "prompt=ROMEO:",
        "max_new_tokens=30",
        "num_samples=2",
        "seed=5",
        f"hydra.run.dir={tmp_path}/gen",
    ]
    gen = run_cli(*args, cwd=tmp_path, env=ONE_THREAD)
    assert gen.returncode == 0, gen.stderr[-3000:]
    _, *bodies = gen.stdout.split("--- sample ")
    assert len(bodies) == 2 and all(b.startswith(f"{i}/2\n") for i, b in enumerate(bodies, 1))
    texts = [b.split("\n", 1)[1] for b in bodies]  # each: the prompt, 30 characters, a newline
    assert all(t.startswith("ROMEO:") and len(t) == 6 + 30 + 1 for t in texts) and texts[0] != texts[1]
    assert set("".join(texts)) <= set(CORPUS)  # only the corpus's characters can be generated
