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


def test_confusion_table_text_exactly():
    m = Classification(2, ["short", "a_very_long_name"])
    m.update(onehot_logits([0] * 12 + [1], 2), torch.tensor([0] * 12 + [1]))
    # names cut to 10 characters; columns as wide as the widest name or count, plus one
    assert m.table().splitlines() == [  # width 11 = len("a_very_lon") + 1
        "true\\pred" + " " * 8 + "short" + " a_very_lon",
        "short" + " " * 6 + " " * 9 + "12" + " " * 10 + "0",
        "a_very_lon" + " " + " " * 10 + "0" + " " * 10 + "1",
    ]


class ImageLog:
    def __init__(self):
        self.images = []

    def log_image(self, tag, image, step):
        self.images.append((tag, image, step))


def test_report_logs_the_confusion_image_up_to_100_classes():
    m = Classification(3)
    m.update(onehot_logits([0, 2, 2], 3), torch.tensor([0, 1, 2]))
    log = ImageLog()
    m.report(log, "val", 5)
    [(tag, image, step)] = log.images
    assert tag == "val/confusion_matrix" and step == 5 and torch.equal(image, confusion_image(m.confusion))
    for n, logged in ((100, 1), (101, 0)):
        log = ImageLog()
        Classification(n).report(log, "test", 1)
        assert len(log.images) == logged, n
    log = ImageLog()
    Classification(3, detailed=False).report(log, "val", 1)
    assert log.images == []


def test_language_model_counts_exactly_and_caps_perplexity():
    m = LanguageModel()
    assert (m.nll.dtype, m.correct.dtype, m.total.dtype) == (torch.float64, torch.long, torch.long)  # summed across ranks
    m.update(torch.tensor([[[math.log(4.0), 0.0]]]), torch.tensor([[0]]))  # one token, p = 4/5
    assert math.isclose(m.compute()["ppl"], 5 / 4, rel_tol=1e-6) and m.compute()["acc"] == 1.0
    m.reset()
    m.update(torch.tensor([[[200.0, 0.0]]]), torch.tensor([[1]]))  # nll 200: exp would overflow
    assert m.compute()["ppl"] == math.exp(50.0)


def test_confusion_image_rows_of_one_sample():
    img = confusion_image(torch.tensor([[0, 1], [0, 0]]), cell=1)  # row 0: one sample, predicted 1
    torch.testing.assert_close(img[:, 0, 1], torch.tensor([0.0, 0.4, 0.8]))  # a full cell: dark blue
    torch.testing.assert_close(img[:, 0, 0], torch.ones(3))


def test_classification_small_counts_by_hand():
    m = Classification(3)
    assert m.class_names == ["0", "1", "2"]  # default names: the indices
    assert all(t.dtype == torch.long for t in m.state())  # exact counts, summed across ranks
    m.update(onehot_logits([1, 1, 0, 0, 2], 3), torch.tensor([0, 1, 1, 1, 2]))
    out = m.compute()
    # precision by class 0/2, 1/2, 1/1; recall 0/1, 1/3, 1/1 (class 2: a single sample); f1 0, 0.4, 1
    assert out["acc"] == 2 / 5
    assert math.isclose(out["precision"], 1.5 / 3) and math.isclose(out["recall"], (1 / 3 + 1) / 3)
    assert math.isclose(out["f1"], 1.4 / 3)
    one = Classification(2)
    one.update(onehot_logits([1], 2), torch.tensor([1]))
    assert one.compute()["acc"] == 1.0


def test_undetailed_metrics_keep_accuracy_only():
    m = Classification(3, detailed=False)
    m.update(onehot_logits([0, 1, 1], 3), torch.tensor([0, 1, 2]))
    assert m.compute() == {"acc": 2 / 3}
    assert m.table() == "(no confusion matrix: detailed=false)"  # not a 1x1 matrix under the first class name
