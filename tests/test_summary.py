"""callbacks.model_summary: parameter counts and output shapes per top-level module, in the run folder."""

import torch
from torch import nn

from bigmodel.summary import ModelSummary, summarize, table
from helpers import make_trainer


def test_counts_and_shapes_of_a_small_cnn():
    model = nn.Sequential(
        nn.Conv2d(3, 5, 3, padding=1),
        nn.BatchNorm2d(5),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, 4),
    )
    model[0].bias.requires_grad_(False)  # frozen: counted, not trainable
    model.train()
    before = [b.clone() for b in model.buffers()]
    rows = summarize(model, (torch.randn(2, 3, 8, 8),))

    conv, linear = 3 * 5 * 3 * 3 + 5, 5 * 4 + 4
    assert [(r.name, r.type, r.params, r.trainable) for r in rows] == [
        ("0", "Conv2d", conv, conv - 5),
        ("1", "BatchNorm2d", 10, 10),
        ("2", "ReLU", 0, 0),
        ("3", "AdaptiveAvgPool2d", 0, 0),
        ("4", "Flatten", 0, 0),
        ("5", "Linear", linear, linear),
    ]
    assert [r.output for r in rows] == [
        "[2, 5, 8, 8]",
        "[2, 5, 8, 8]",
        "[2, 5, 8, 8]",
        "[2, 5, 1, 1]",
        "[2, 5]",
        "[2, 4]",
    ]
    assert model.training  # left as it was, and the pass ran in eval mode: no BatchNorm statistics moved
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers()))
    text = table(model, rows)
    total = conv + 10 + linear
    assert f"{total - 5:,} trainable params" in text and "5 non-trainable params" in text
    assert f"{total:,} total params" in text


def test_shared_weights_are_counted_once_in_the_total():
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight  # tied, as GPT's head and token embedding
    model = nn.Sequential(emb, head)
    rows = summarize(model, (torch.tensor([[1, 2, 3]]),))
    assert [r.params for r in rows] == [40, 40] and rows[1].output == "[1, 3, 10]"
    assert "40 total params" in table(model, rows)


def test_written_to_the_run_folder_at_the_first_batch(tmp_path):
    trainer = make_trainer(max_steps=3, callbacks={"model_summary": ModelSummary(str(tmp_path))})
    x = next(iter(trainer._train_loader()))[0]  # the batch the summary sees (the first one)
    trainer.fit()
    lines = (tmp_path / "model_summary.txt").read_text().splitlines()
    model = trainer.model.eval()
    with torch.no_grad():  # the CNN's forward step by step: stem -> blocks -> pool -> dropout -> head
        shapes = [model.stem(x)]
        for m in (model.blocks, model.pool, lambda t: model.dropout(t.flatten(1)), model.head):
            shapes.append(m(shapes[-1]))
    for (name, child), out in zip(model.named_children(), shapes):
        row = next(line for line in lines if f"| {name} " in line)
        cells = [c.strip() for c in row.split("|")]
        n = sum(p.numel() for p in child.parameters())
        assert cells[2:] == [type(child).__name__, f"{n:,}", f"{n:,}", str(list(out.shape))], row
    assert f"{sum(p.numel() for p in model.parameters()):,} total params" in lines


def test_nested_outputs_show_each_shape():
    lstm = nn.LSTM(3, 4, batch_first=True)
    rows = summarize(nn.Sequential(lstm), (torch.randn(2, 5, 3),))  # Sequential holds one child: the LSTM
    assert rows[0].output == "([2, 5, 4], ([1, 2, 4], [1, 2, 4]))"
    packed = nn.utils.rnn.pack_padded_sequence(torch.randn(2, 5, 3), [5, 2], batch_first=True)
    model = nn.Module()
    model.lstm = lstm
    model.forward = lambda x: model.lstm(x)
    assert summarize(model, (packed,))[0].output == "(packed [7, 4], ([1, 2, 4], [1, 2, 4]))"
