"""Classification and language-model metrics against hand-computed values."""

import math

import torch

from bigmodel.metrics import Classification, LanguageModel, confusion_image


def onehot_logits(preds, n):
    return torch.nn.functional.one_hot(torch.tensor(preds), n).float()


def test_classification_metrics_by_hand():
    m = Classification(3, ["a", "b", "c"])
    targets = torch.tensor([0, 0, 1, 1, 2, 2])
    preds = [0, 1, 1, 1, 2, 0]
    m.update(onehot_logits(preds[:3], 3), targets[:3])  # in two batches
    m.update(onehot_logits(preds[3:], 3), targets[3:])
    out = m.compute()
    assert out["acc"] == 4 / 6
    # per class precision: a 1/2, b 2/3, c 1/1 ; recall: a 1/2, b 2/2, c 1/2
    assert math.isclose(out["precision"], (1 / 2 + 2 / 3 + 1) / 3)
    assert math.isclose(out["recall"], (1 / 2 + 1 + 1 / 2) / 3)
    f1 = [2 * p * r / (p + r) for p, r in [(1 / 2, 1 / 2), (2 / 3, 1), (1, 1 / 2)]]
    assert math.isclose(out["f1"], sum(f1) / 3)
    assert m.confusion.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    table = m.table()
    assert table.splitlines()[0].split()[1:] == ["a", "b", "c"]
    assert confusion_image(m.confusion).shape[0] == 3


def test_ignore_index_and_reset():
    m = Classification(2)
    m.update(onehot_logits([1, 1, 0], 2), torch.tensor([1, -100, 1]))
    assert m.compute()["acc"] == 0.5
    m.reset()
    assert m.total.item() == 0


def test_language_model_perplexity():
    m = LanguageModel()
    logits = torch.zeros(2, 3, 4)  # uniform over 4 tokens: ppl 4
    m.update(logits, torch.randint(0, 4, (2, 3)))
    assert math.isclose(m.compute()["ppl"], 4.0, rel_tol=1e-6)


def test_perplexity_skips_ignored_positions():
    # two scored positions, the middle one ignored (-100 or a padding id)
    logits = torch.tensor([[[math.log(3.0), 0.0, 0.0, 0.0],    # p(0) = 3/6 = 1/2
                            [0.0, 0.0, 0.0, 0.0],              # ignored
                            [0.0, math.log(5.0), 0.0, 0.0]]])  # p(1) = 5/8
    for ignore in (-100, 3):
        m = LanguageModel(ignore_index=ignore)
        m.update(logits, torch.tensor([[0, ignore, 1]]))
        out = m.compute()
        nll = (-math.log(1 / 2) - math.log(5 / 8)) / 2
        assert math.isclose(out["ppl"], math.exp(nll), rel_tol=1e-6), ignore
        assert out["acc"] == 1.0  # both scored positions are argmax hits; the ignored one is not counted
        assert m.total.item() == 2


def test_confusion_image_is_normalized_by_true_class():
    cm = torch.tensor([[1, 3], [0, 2]])  # row 0: 1/4 right, 3/4 wrong; row 1: all right
    img = confusion_image(cm, cell=2)
    assert img.shape == (3, 4, 4)
    frac = torch.tensor([[0.25, 0.75], [0.0, 1.0]])  # by rows; by columns it would be [[1, 0.6], [0, 0.4]]
    for (i, j), f in zip([(0, 0), (0, 1), (1, 0), (1, 1)], frac.flatten().tolist()):
        cell = img[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2]
        expected = torch.tensor([1 - f, 1 - 0.6 * f, 1 - 0.2 * f]).view(3, 1, 1).expand(3, 2, 2)
        torch.testing.assert_close(cell, expected)
    assert torch.equal(confusion_image(torch.zeros(2, 2, dtype=torch.long)), torch.ones(3, 24, 24))  # no rows: white
