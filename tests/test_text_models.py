"""Text classifiers: forward shapes, padding never changes a prediction, sizes from the config, training."""

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from bigmodel.models.fasttext import FastText
from bigmodel.models.rnn import LSTMClassifier
from bigmodel.models.textcnn import TextCNN
from bigmodel.models.transformer import TransformerClassifier
from conftest import run_cli
from test_text_data import write_sentiment

VOCAB, CLASSES = 40, 3
MODELS = {
    "lstm-max": lambda: LSTMClassifier(
        VOCAB, CLASSES, embed_dim=8, hidden_size=8, n_layer=2, dropout=0.3, word_dropout=0.1
    ),
    "lstm-mean": lambda: LSTMClassifier(VOCAB, CLASSES, embed_dim=8, hidden_size=8, pooling="mean"),
    "lstm-last": lambda: LSTMClassifier(VOCAB, CLASSES, embed_dim=8, hidden_size=8, n_layer=2, pooling="last"),
    "lstm-unidirectional": lambda: LSTMClassifier(
        VOCAB, CLASSES, embed_dim=8, hidden_size=8, bidirectional=False, pooling="last"
    ),
    "transformer-learned-mean": lambda: TransformerClassifier(VOCAB, CLASSES, hidden_size=16, n_head=2, max_length=32),
    "transformer-sinusoidal-cls": lambda: TransformerClassifier(
        VOCAB, CLASSES, hidden_size=16, n_head=2, max_length=32, positions="sinusoidal", pooling="cls", word_dropout=0.1
    ),
    "transformer-max": lambda: TransformerClassifier(
        VOCAB, CLASSES, hidden_size=16, n_head=2, n_layer=1, pooling="max"
    ),
    "textcnn": lambda: TextCNN(VOCAB, CLASSES, embed_dim=8, n_filters=6, word_dropout=0.1, embed_dropout=0.1),
    "textcnn-wide-and-unigram": lambda: TextCNN(VOCAB, CLASSES, embed_dim=8, filter_widths=[1, 7], n_filters=4),
    "fasttext": lambda: FastText(VOCAB, CLASSES, embed_dim=8, dropout=0.2, word_dropout=0.1),
    "fasttext-hidden": lambda: FastText(VOCAB, CLASSES, embed_dim=8, hidden_size=6),
}


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest


def batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(2, VOCAB, (len(lengths), max(lengths)), generator=g)
    lengths_t = torch.tensor(lengths)
    tokens[torch.arange(max(lengths)) >= lengths_t[:, None]] = 0  # pad_idx
    return tokens, lengths_t


@pytest.mark.parametrize("name", MODELS)
def test_forward_shapes(name):
    torch.manual_seed(0)
    model = MODELS[name]()
    tokens, lengths = batch([7, 3, 1, 5])
    logits = model(tokens, lengths)
    assert logits.shape == (4, CLASSES) and logits.dtype == torch.float32 and torch.isfinite(logits).all()
    logits.sum().backward()
    assert model.embed.weight.grad is not None and model.head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", MODELS)
def test_padding_never_changes_a_prediction(name):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    tokens, lengths = batch([7, 3, 1, 5], seed=1)
    with torch.no_grad():
        ref = model(tokens, lengths)
        more_padding = model(F.pad(tokens, (0, 9)), lengths)
        garbage_padding = model(torch.where(tokens == 0, torch.randint_like(tokens, 2, VOCAB), tokens), lengths)
        alone = torch.cat([model(tokens[i : i + 1, :n], lengths[i : i + 1]) for i, n in enumerate(lengths.tolist())])
    for other in (more_padding, garbage_padding, alone):
        torch.testing.assert_close(other, ref, atol=1e-5, rtol=1e-5)
    assert ref.argmax(-1).tolist() == alone.argmax(-1).tolist()


def test_transformer_reads_long_texts_up_to_its_positions():
    model = TransformerClassifier(VOCAB, CLASSES, hidden_size=16, n_head=2, max_length=4).eval()
    tokens, lengths = batch([6, 3])
    with torch.no_grad():
        out = model(tokens, lengths)
        cut = model(tokens[:, :4], lengths.clamp(max=4))
    torch.testing.assert_close(out, cut)
    assert not torch.equal(out[0], model(tokens[:1, :3], torch.tensor([3]))[0])  # the 4th token counts


def test_sizes_are_overridable_from_the_config(compose_train):
    args = {"vocab_size": VOCAB, "num_classes": CLASSES, "pad_idx": 0}
    lstm = instantiate(compose_train(["model=lstm", "model.hidden_size=32", "model.n_layer=2"]).model, **args)
    assert isinstance(lstm, LSTMClassifier) and (lstm.lstm.hidden_size, lstm.lstm.num_layers) == (32, 2)
    assert lstm.head.in_features == 64  # both directions
    tf = instantiate(
        compose_train(
            [
                "model=transformer",
                "model.hidden_size=32",
                "model.n_layer=3",
                "model.positions=sinusoidal",
                "model.pooling=cls",
            ]
        ).model,
        **args,
    )
    assert isinstance(tf, TransformerClassifier) and len(tf.blocks) == 3 and tf.embed.embedding_dim == 32
    assert "pos" not in tf.state_dict()  # sinusoids are computed, not saved
    cnn = instantiate(
        compose_train(["model=textcnn", "model.filter_widths=[2,6]", "model.n_filters=7", "model.embed_dim=12"]).model,
        **args,
    )
    assert isinstance(cnn, TextCNN) and [c.kernel_size[0] for c in cnn.convs] == [2, 6]
    assert cnn.embed.embedding_dim == 12 and cnn.head.in_features == 14  # 7 maps per width
    bag = instantiate(compose_train(["model=fasttext", "model.embed_dim=12"]).model, **args)
    assert isinstance(bag, FastText) and bag.head.in_features == 12 and isinstance(bag.hidden, torch.nn.Identity)
    bag = instantiate(compose_train(["model=fasttext", "model.hidden_size=5"]).model, **args)
    assert bag.hidden[0].out_features == 5 and bag.head.in_features == 5


def test_textcnn_reads_texts_shorter_than_its_widest_filter():
    """Widths 3/4/5 on texts of 1 and 2 tokens: every word counts, and an empty text still gets logits."""
    torch.manual_seed(0)
    model = TextCNN(VOCAB, CLASSES, embed_dim=8, n_filters=6).eval()
    with torch.no_grad():
        one = model(torch.tensor([[5], [6]]), torch.tensor([1, 1]))
        two = model(torch.tensor([[5, 7], [5, 8]]), torch.tensor([2, 2]))
        empty = model(torch.zeros(2, 0, dtype=torch.long), torch.tensor([0, 0]))
    assert torch.isfinite(one).all() and torch.isfinite(two).all() and empty.shape == (2, CLASSES)
    assert not torch.allclose(one[0], one[1]) and not torch.allclose(two[0], two[1])  # the word decides
    torch.testing.assert_close(empty[0], empty[1])


@pytest.mark.parametrize("name", ["lstm-max", "transformer-learned-mean", "textcnn", "fasttext"])
def test_learns_a_keyword_rule(name):
    """Label = which of three marker tokens appears somewhere in a random-length text."""
    torch.manual_seed(0)
    model = MODELS[name]()
    tokens, lengths = batch([int(n) for n in torch.randint(2, 9, (48,)).tolist()], seed=2)
    tokens[tokens < 5] = 5  # 2, 3, 4 are the markers
    labels = torch.arange(48) % 3
    pos = (torch.rand(48) * lengths).long()
    tokens[torch.arange(48), pos] = labels + 2
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(model(tokens, lengths), labels).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(tokens, lengths).argmax(-1) == labels).float().mean().item()
    assert acc > 0.95


def test_textcnn_gradients_equal_those_of_the_plain_graph():
    """Training recomputes only the max's winning windows; the gradients must be the full graph's."""
    torch.manual_seed(0)
    model = TextCNN(VOCAB, CLASSES, embed_dim=8, filter_widths=[2, 5], n_filters=6, dropout=0.0)
    tokens, lengths = batch([7, 3, 1, 5], seed=3)
    labels = torch.tensor([0, 1, 2, 1])

    def plain(m: TextCNN) -> torch.Tensor:  # every window through autograd, then the max
        x = (m.embed(tokens) * (torch.arange(tokens.shape[1]) < lengths[:, None])[..., None]).transpose(1, 2)
        feats = [
            conv(x)
            .masked_fill(torch.arange(x.shape[2] + w - 1) >= (lengths + w - 1)[:, None, None], float("-inf"))
            .amax(2)
            .relu()
            for conv, w in zip(m.convs, m.filter_widths)
        ]
        return m.head(torch.cat(feats, 1))

    grads = []
    for forward in (model, plain):
        model.zero_grad()
        logits = forward(tokens, lengths) if forward is model else plain(model)
        F.cross_entropy(logits, labels).backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], atol=1e-6, rtol=1e-5, msg=k)
    assert grads[0]["embed.weight"].abs().sum() > 0 and grads[0]["convs.1.weight"].abs().sum() > 0


@pytest.mark.slow
def test_cli_trains_textcnn_and_predicts_a_one_word_text(tmp_path):
    write_sentiment(tmp_path / "data" / "sst2")
    run_dir = tmp_path / "run"
    out = run_cli(
        "train",
        "model=textcnn",
        "data=sst2",
        "trainer=debug",
        "logger=none",
        "model.embed_dim=16",
        "model.n_filters=8",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        env={"OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "test/acc=" in (run_dir / "train.log").read_text()
    pred = run_cli(
        "predict",
        f"ckpt_path={run_dir}/checkpoints/best.pt",
        "text=film",
        f"hydra.run.dir={tmp_path}/p",
        cwd=tmp_path,
        env={"OMP_NUM_THREADS": "1"},
    )
    assert pred.returncode == 0, pred.stderr[-3000:]
    label, probs, text = pred.stdout.strip().split("\n")[-1].split("\t")
    assert label in ("negative", "positive") and probs.startswith("negative=") and text == "film"
