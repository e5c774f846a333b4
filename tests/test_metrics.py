"""Classification and language-model metrics against hand-computed values."""

import math

import torch

from bigmodel.metrics import PR_THRESHOLDS, Classification, LanguageModel


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
    logits = torch.tensor(
        [
            [
                [math.log(3.0), 0.0, 0.0, 0.0],  # p(0) = 3/6 = 1/2
                [0.0, 0.0, 0.0, 0.0],  # ignored
                [0.0, math.log(5.0), 0.0, 0.0],
            ]
        ]
    )  # p(1) = 5/8
    for ignore in (-100, 3):
        m = LanguageModel(ignore_index=ignore)
        m.update(logits, torch.tensor([[0, ignore, 1]]))
        out = m.compute()
        nll = (-math.log(1 / 2) - math.log(5 / 8)) / 2
        assert math.isclose(out["ppl"], math.exp(nll), rel_tol=1e-6), ignore
        assert out["acc"] == 1.0  # both scored positions are argmax hits; the ignored one is not counted
        assert m.total.item() == 2


def test_pr_counts_by_hand():
    m = Classification(2, ["neg", "pos"])
    # softmax scores for class "pos": 0.9 (true pos), 0.6 (true neg), 0.3 (true pos)
    probs = torch.tensor([[0.1, 0.9], [0.4, 0.6], [0.7, 0.3]])
    m.update(probs.log(), torch.tensor([1, 0, 1]))
    tp, fp, tn, fn = m.pr_counts(1)
    assert len(tp) == PR_THRESHOLDS

    def at(t: float) -> int:  # the index of threshold t
        return round(t * (PR_THRESHOLDS - 1))

    assert (tp[at(0.0)], fp[at(0.0)], tn[at(0.0)], fn[at(0.0)]) == (2, 1, 0, 0)  # everything predicted "pos"
    assert (tp[at(0.5)], fp[at(0.5)], tn[at(0.5)], fn[at(0.5)]) == (1, 1, 0, 1)
    assert (tp[at(0.7)], fp[at(0.7)], tn[at(0.7)], fn[at(0.7)]) == (1, 0, 1, 1)
    assert (tp[at(0.95)], fp[at(0.95)], tn[at(0.95)], fn[at(0.95)]) == (0, 0, 1, 2)
    assert m.pr_counts(0)[0][at(0.5)] == 0 and m.pr_counts(0)[1][at(0.5)] == 1  # "neg" scores 0.1, 0.4, 0.7
    m.reset()
    assert m.scores.sum() == 0


def test_confusion_table_text_exactly():
    m = Classification(2, ["short", "a_very_long_name"])
    m.update(onehot_logits([0] * 12 + [1], 2), torch.tensor([0] * 12 + [1]))
    # names cut to 10 characters; columns as wide as the widest name or count, plus one
    assert m.table().splitlines() == [  # width 11 = len("a_very_lon") + 1
        "true\\pred" + " " * 8 + "short" + " a_very_lon",
        "short" + " " * 6 + " " * 9 + "12" + " " * 10 + "0",
        "a_very_lon" + " " + " " * 10 + "0" + " " * 10 + "1",
    ]


class ReportLog:
    def __init__(self):
        self.images, self.texts, self.curves = [], [], []

    def log_image(self, tag, image, step):
        self.images.append((tag, image, step))

    def log_text(self, tag, text, step):
        self.texts.append((tag, text, step))

    def log_pr_curve(self, tag, tp, fp, tn, fn, step):
        self.curves.append((tag, step))


def test_report_logs_a_figure_a_table_and_pr_curves_up_to_100_classes():
    m = Classification(3, ["a", "b", "c"])
    m.update(onehot_logits([0, 2, 2], 3), torch.tensor([0, 1, 2]))
    log = ReportLog()
    m.report(log, "val", 5)
    [(tag, image, step)] = log.images
    assert tag == "val/confusion_matrix" and step == 5
    assert image.shape[0] == 3 and min(image.shape[1:]) >= 300 and 0 <= image.min() and image.max() <= 1
    assert [(t, s) for t, _, s in log.texts] == [("val/per_class", 5)]
    assert log.curves == [("val/pr_curve/a", 5), ("val/pr_curve/b", 5), ("val/pr_curve/c", 5)]
    for n, logged in ((100, 1), (101, 0)):
        log = ReportLog()
        big = Classification(n)
        big.update(onehot_logits([0], n), torch.tensor([0]))
        big.report(log, "test", 1)
        assert (len(log.images), len(log.curves)) == (logged, logged * n), n
    log = ReportLog()
    Classification(3, detailed=False).report(log, "val", 1)
    Classification(3).report(log, "val", 1)  # nothing evaluated: nothing to show
    assert log.images == log.texts == log.curves == []


def test_per_class_table_by_hand():
    m = Classification(2, ["cat", "dog"])
    m.update(onehot_logits([0, 0, 1, 0], 2), torch.tensor([0, 1, 1, 1]))  # cat: P 1/3 R 1; dog: P 1 R 1/3
    lines = m.per_class().splitlines()
    assert lines[0].split() == ["class", "precision", "recall", "f1", "support"]
    assert lines[1].split() == ["cat", "0.3333", "1.0000", "0.5000", "1"]
    assert lines[2].split() == ["dog", "1.0000", "0.3333", "0.5000", "3"]
    assert lines[3].split() == ["macro", "0.6667", "0.6667", "0.5000", "4"]


def test_language_model_counts_exactly_and_caps_perplexity():
    m = LanguageModel()
    assert (m.nll.dtype, m.correct.dtype, m.total.dtype) == (
        torch.float64,
        torch.long,
        torch.long,
    )  # summed across ranks
    m.update(torch.tensor([[[math.log(4.0), 0.0]]]), torch.tensor([[0]]))  # one token, p = 4/5
    assert math.isclose(m.compute()["ppl"], 5 / 4, rel_tol=1e-6) and m.compute()["acc"] == 1.0
    m.reset()
    m.update(torch.tensor([[[200.0, 0.0]]]), torch.tensor([[1]]))  # nll 200: exp would overflow
    assert m.compute()["ppl"] == math.exp(50.0)


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
