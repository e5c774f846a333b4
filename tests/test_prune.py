"""bigmodel prune: global magnitude pruning, channel pruning (and removal), the checkpoint it writes,
and fine-tuning from it with the zeros kept."""

from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from bigmodel import checkpoint
from bigmodel.checkpoint import CheckpointError
from bigmodel.config import ConfigError
from bigmodel.models.gpt import GPT
from bigmodel.models.rnn import LSTMClassifier
from bigmodel.prune import prunable, prune
from bigmodel.restore import restore_model
from bigmodel.train import evaluate
from conftest import compose_cfg, run_cli, write_fake_cifar10
from test_finetune import run_train

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest
CNN_RUN = [
    "model=cnn",
    "model.stem_width=8",
    "model.widths=[16,32]",
    "data.download=false",
    "data.val_size=20",
    "data.batch_size=16",
    "logger=none",
    "trainer.progress_bar=false",
    "test=false",
]


@pytest.fixture(scope="module")
def cnn_ckpt(tmp_path_factory) -> Path:
    """best.pt of a small CNN trained a few steps on a fake CIFAR-10."""
    root = tmp_path_factory.mktemp("cnn")
    write_fake_cifar10(root / "data" / "cifar10", n_train=100, n_test=40)
    run = run_train(root, "run", [*CNN_RUN, "trainer.max_steps=6"])
    return run / "checkpoints" / "best.pt"


def run_prune(ckpt: Path, out: Path, *overrides: str) -> dict:
    cfg = compose_cfg("prune", [f"ckpt_path={ckpt}", f"output={out}", *overrides], out.parent / "prune-run")
    try:
        return prune(cfg)
    finally:
        GlobalHydra.instance().clear()


def zero_share(state: dict[str, torch.Tensor], names: list[str]) -> float:
    return sum(int((state[n] == 0).sum()) for n in names) / sum(state[n].numel() for n in names)


@pytest.mark.parametrize("amount", [0.5, 0.8])
def test_global_pruning_reaches_the_asked_sparsity_over_the_weight_tensors(cnn_ckpt, tmp_path, amount, capsys):
    record = run_prune(cnn_ckpt, tmp_path / "p.pt", f"amount={amount}")
    before, after = checkpoint.load(cnn_ckpt), checkpoint.load(tmp_path / "p.pt")
    names = record["tensors"]
    assert names == [
        "stem.0.weight",
        "blocks.0.conv1.weight",
        "blocks.0.conv2.weight",
        "blocks.1.conv1.weight",
        "blocks.1.conv2.weight",
        "head.weight",
    ]
    total = sum(after["model"][n].numel() for n in names)
    assert zero_share(after["model"], names) == round(amount * total) / total
    assert record["sparsity"] == pytest.approx(round(amount * total) / total)
    per_layer = {n: zero_share(after["model"], [n]) for n in names}
    assert len(set(per_layer.values())) > 1  # one global threshold, not the same share in every layer
    for k, v in before["model"].items():
        if k not in names:  # BatchNorm scales, shifts and statistics are not pruned
            assert torch.equal(after["model"][k], v), k
        else:  # the zeroed weights are the smallest: every survivor is at least as large as any pruned one
            kept = after["model"][k] != 0
            assert torch.equal(after["model"][k][kept], v[kept]), k
    threshold = max(before["model"][n][after["model"][n] == 0].abs().max() for n in names)
    assert all(before["model"][n][after["model"][n] != 0].abs().min() >= threshold for n in names)
    assert after["pruning"]["amount"] == amount and "optimizer" not in after
    out = capsys.readouterr().out
    assert "blocks.1.conv2.weight" in out and f"{per_layer['blocks.1.conv2.weight']:.1%}" in out
    assert "total (pruned tensors)" in out and f"{round(amount * total) / total:.1%}" in out


def test_the_pruned_checkpoint_restores_and_evaluates(cnn_ckpt, tmp_path):
    run_prune(cnn_ckpt, tmp_path / "p.pt", "amount=0.6")
    restored = restore_model(str(tmp_path / "p.pt"))
    saved = checkpoint.load(tmp_path / "p.pt")["model"]
    assert all(torch.equal(v, saved[k]) for k, v in restored.model.state_dict().items())
    root = cnn_ckpt.parents[2]
    cfg = compose_cfg(
        "eval",
        [
            f"ckpt_path={tmp_path / 'p.pt'}",
            "trainer.progress_bar=false",
            f"paths.data_dir={root}/data",
            f"paths.cache_dir={root}/cache",
        ],
        tmp_path / "eval",
    )
    try:
        metrics = evaluate(cfg)
    finally:
        GlobalHydra.instance().clear()
    assert 0 <= metrics["test/acc"] <= 1


def test_fine_tuning_from_it_keeps_the_pruned_sparsity(cnn_ckpt, tmp_path):
    record = run_prune(cnn_ckpt, tmp_path / "p.pt", "amount=0.7")
    pruned = checkpoint.load(tmp_path / "p.pt")["model"]
    root = cnn_ckpt.parents[2]
    run = run_train(
        root, "tuned", [*CNN_RUN, "trainer.max_steps=4", "optimizer.lr=0.01", f"init_from={tmp_path / 'p.pt'}"]
    )  # init_keep_sparsity left at null: automatic
    ckpt = checkpoint.load(run / "checkpoints" / "last.pt")
    tuned, names = ckpt["model"], record["tensors"]
    assert ckpt["callbacks"]["keep_sparsity"]["tensors"] == names  # fine-tuning from this one keeps them too
    assert zero_share(tuned, names) == zero_share(pruned, names) == pytest.approx(0.7, abs=1e-3)
    for n in names:  # the same positions are zero, in every layer (also those the global threshold barely touched)
        assert torch.equal(tuned[n] == 0, pruned[n] == 0), n
        assert not torch.equal(tuned[n], pruned[n]), n  # the other weights did train


def test_fine_tuning_with_init_keep_sparsity_false_lets_the_zeros_train(cnn_ckpt, tmp_path):
    record = run_prune(cnn_ckpt, tmp_path / "p.pt", "amount=0.7")
    run = run_train(
        cnn_ckpt.parents[2],
        "free",
        [
            *CNN_RUN,
            "trainer.max_steps=2",
            "optimizer.lr=0.01",
            f"init_from={tmp_path / 'p.pt'}",
            "init_keep_sparsity=false",
        ],
    )
    tuned = checkpoint.load(run / "checkpoints" / "last.pt")["model"]
    assert zero_share(tuned, record["tensors"]) < 0.1


@torch.no_grad()
def test_channel_pruning_removes_channels_without_changing_the_outputs(cnn_ckpt, tmp_path, capsys):
    run_prune(cnn_ckpt, tmp_path / "masked.pt", "amount=0.5", "structured=true", "shrink=false")
    run_prune(cnn_ckpt, tmp_path / "small.pt", "amount=0.5", "structured=true")
    masked, small = restore_model(str(tmp_path / "masked.pt")), restore_model(str(tmp_path / "small.pt"))
    m = masked.model
    for conv, norm in [(m.stem[0], m.stem[1])] + [
        (c, n) for b in m.blocks for c, n in ((b.conv1, b.norm1), (b.conv2, b.norm2))
    ]:
        dead = (conv.weight.flatten(1) == 0).all(1)
        assert int(dead.sum()) == conv.out_channels // 2  # the same share of channels in every layer
        assert (norm.weight[dead] == 0).all() and (norm.bias[dead] == 0).all()  # the channel outputs 0
    assert small.config.model.stem_width == 4 and list(small.config.model.widths) == [8, 16]
    n_masked, n_small = (sum(p.numel() for p in r.model.parameters()) for r in (masked, small))
    assert n_small < 0.3 * n_masked
    x = torch.randn(5, 3, 32, 32)
    torch.testing.assert_close(small.model(x), masked.model(x), rtol=1e-4, atol=1e-5)
    assert "model.stem_width=4 model.widths=[8,16]" in capsys.readouterr().out  # how to fine-tune it


@pytest.mark.slow
def test_a_shrunk_cnn_fine_tunes_with_the_printed_model_sizes(cnn_ckpt, tmp_path):
    run_prune(cnn_ckpt, tmp_path / "small.pt", "amount=0.5", "structured=true")
    small = checkpoint.load(tmp_path / "small.pt")["model"]
    run = run_train(
        cnn_ckpt.parents[2],
        "small",
        [
            *CNN_RUN,
            "model.stem_width=4",
            "model.widths=[8,16]",
            "trainer.max_steps=2",
            f"init_from={tmp_path / 'small.pt'}",
        ],
    )
    tuned = checkpoint.load(run / "checkpoints" / "last.pt")["model"]
    assert {k: v.shape for k, v in tuned.items()} == {k: v.shape for k, v in small.items()}


def test_prunable_tensors_leave_out_embeddings_norms_biases_and_tied_weights():
    gpt = GPT(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=16)
    assert [n for n, _, _ in prunable(gpt)] == [
        "blocks.0.attn.qkv.weight",
        "blocks.0.attn.proj.weight",
        "blocks.0.mlp.up.weight",
        "blocks.0.mlp.down.weight",
    ]
    lstm = LSTMClassifier(vocab_size=30, num_classes=2, embed_dim=8, hidden_size=8, bidirectional=False)
    assert [n for n, _, _ in prunable(lstm)] == ["lstm.weight_ih_l0", "lstm.weight_hh_l0", "head.weight"]


def test_a_gpts_rows_prune_and_the_table_lists_its_tied_weight():
    from bigmodel.prune import sparsity_table
    from bigmodel.prune_channels import prune_rows

    torch.manual_seed(0)
    gpt = GPT(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=16)
    names = prune_rows(gpt, 0.5, {"vocab_size": 20})
    table, share = sparsity_table(gpt, names)  # a tied weight (lm_head = tok_emb) is found under its own name
    assert all(name in table for name in names) and share > 0


@pytest.mark.slow
def test_a_text_classifier_prunes_globally_and_by_rows(tmp_path):
    from test_finetune import SMALL_LSTM
    from test_text_data import write_sentiment

    write_sentiment(tmp_path / "data" / "sst2", n_train=32)
    run = run_train(tmp_path, "lstm", [*SMALL_LSTM, "data=sst2", "test=false"])
    ckpt = run / "checkpoints" / "best.pt"
    record = run_prune(ckpt, tmp_path / "p.pt", "amount=0.5")
    state = checkpoint.load(tmp_path / "p.pt")["model"]
    assert "embed.weight" not in record["tensors"] and zero_share(state, record["tensors"]) == pytest.approx(0.5, 1e-3)
    assert restore_model(str(tmp_path / "p.pt")).model is not None
    with pytest.raises(CheckpointError, match="structured=true: LSTMClassifier has no convolution or linear layer"):
        run_prune(ckpt, tmp_path / "rows.pt", "amount=0.5", "structured=true")


def test_bad_inputs_are_one_clear_error(cnn_ckpt, tmp_path):
    for amount in ("0", "1", "1.5", "-0.2", "half", "true"):
        with pytest.raises(
            ConfigError,
            match=f"amount={amount if amount != 'half' else repr(amount)}.* is not valid: .*strictly between 0 and 1",
        ):
            run_prune(cnn_ckpt, tmp_path / "p.pt", f"amount={amount}")
    with pytest.raises(ConfigError, match="structured='yes' is not valid; use true or false"):
        run_prune(cnn_ckpt, tmp_path / "p.pt", "structured=yes")
    with pytest.raises(CheckpointError, match="ckpt_path='.*nope.pt': no such file"):
        run_prune(tmp_path / "nope.pt", tmp_path / "p.pt")
    with pytest.raises(ConfigError, match="is the checkpoint being pruned"):
        run_prune(cnn_ckpt, cnn_ckpt)
    (tmp_path / "p.pt").write_bytes(b"keep me")
    with pytest.raises(ConfigError, match="output='.*p.pt' exists: give another output=PATH, or overwrite=true"):
        run_prune(cnn_ckpt, tmp_path / "p.pt")
    assert (tmp_path / "p.pt").read_bytes() == b"keep me"
    run_prune(cnn_ckpt, tmp_path / "p.pt", "overwrite=true")
    assert checkpoint.load(tmp_path / "p.pt")["pruning"]["amount"] == 0.5


def test_the_command_line_says_what_is_wrong_in_one_line(cnn_ckpt, tmp_path):
    out = run_cli("prune", f"ckpt_path={cnn_ckpt}", "amount=1.5", cwd=tmp_path)
    said = out.stdout + out.stderr
    assert out.returncode == 1 and "Traceback" not in said
    errors = [line for line in said.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].endswith(
        "error: amount=1.5 is not valid: the share of weights to prune, strictly between 0 and 1 (e.g. amount=0.5)"
    )
    default = cnn_ckpt.with_name("best-pruned30.pt")
    out = run_cli("prune", f"ckpt_path={cnn_ckpt}", "amount=0.3", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert default.is_file() and f"wrote {default}" in out.stdout
    default.unlink()
