"""Classifier tokenizers on Chinese, mixed Chinese-English and English text; the `<unk>` warning."""

import logging
import re
import sys

import pytest

from bigmodel.data.errors import DataError
from bigmodel.data.text import text_csv
from bigmodel.data.tokenizers import Tokenizer, tokenize, unknown_warning, with_ngrams
from bigmodel.data.vocab import Vocab
from conftest import SHARED_DATA

ZH = "这台电脑很好，我很满意！"
MIXED = "这部iPhone 12拍的照片很清楚。It's great."
EN = "It's a gripping, funny film (2002) -- 10/10!"

EXPECTED = {
    Tokenizer.whitespace: {
        ZH: ["这台电脑很好，我很满意！"],
        MIXED: ["这部iphone", "12拍的照片很清楚。it's", "great."],
        EN: ["it's", "a", "gripping,", "funny", "film", "(2002)", "--", "10/10!"],
    },
    Tokenizer.words: {
        ZH: ["这", "台", "电", "脑", "很", "好", "，", "我", "很", "满", "意", "！"],
        MIXED: ["这", "部", "iphone", "12", "拍", "的", "照", "片", "很", "清", "楚", "。", "it's", "great", "."],
        EN: ["it's", "a", "gripping", ",", "funny", "film", "(", "2002", ")", "-", "-", "10", "/", "10", "!"],
    },
    Tokenizer.chars: {
        ZH: ["这", "台", "电", "脑", "很", "好", "，", "我", "很", "满", "意", "！"],
        MIXED: [
            "这",
            "部",
            "i",
            "p",
            "h",
            "o",
            "n",
            "e",
            "1",
            "2",
            "拍",
            "的",
            "照",
            "片",
            "很",
            "清",
            "楚",
            "。",
            "i",
            "t",
            "'",
            "s",
            "g",
            "r",
            "e",
            "a",
            "t",
            ".",
        ],
        EN: [
            "i",
            "t",
            "'",
            "s",
            "a",
            "g",
            "r",
            "i",
            "p",
            "p",
            "i",
            "n",
            "g",
            ",",
            "f",
            "u",
            "n",
            "n",
            "y",
            "f",
            "i",
            "l",
            "m",
            "(",
            "2",
            "0",
            "0",
            "2",
            ")",
            "-",
            "-",
            "1",
            "0",
            "/",
            "1",
            "0",
            "!",
        ],
    },
    Tokenizer.jieba: {
        ZH: ["这台", "电脑", "很", "好", "，", "我", "很", "满意", "！"],
        MIXED: ["这部", "iphone", "12", "拍", "的", "照片", "很", "清楚", "。", "it", "'", "s", "great", "."],
        EN: ["it", "'", "s", "a", "gripping", ",", "funny", "film", "(", "2002", ")", "--", "10", "/", "10", "!"],
    },
}


@pytest.mark.parametrize("tokenizer", list(Tokenizer))
@pytest.mark.parametrize("text", [ZH, MIXED, EN], ids=["chinese", "mixed", "english"])
def test_exact_tokens(tokenizer, text):
    if tokenizer == Tokenizer.jieba:
        pytest.importorskip("jieba")
    assert tokenize(text, tokenizer) == EXPECTED[tokenizer][text]
    assert tokenize(text, tokenizer.value) == EXPECTED[tokenizer][text]  # the config's string works too


def test_words_keeps_case_when_asked_and_splits_cjk_punctuation_and_rare_blocks():
    text = "《三体》Vol.2\u3000第〇章：𠀀字"  # book-title marks, ideographic space, U+3007, an extension-B ideograph
    assert tokenize(text, Tokenizer.words, lowercase=False) == [
        "《",
        "三",
        "体",
        "》",
        "Vol",
        ".",
        "2",
        "第",
        "〇",
        "章",
        "：",
        "𠀀",
        "字",
    ]
    assert tokenize("ひらがな 한국어", Tokenizer.words) == ["ひらがな", "한국어"]  # kana, Hangul: words, as in BERT


_OLD_WORDS = re.compile(r"\w+(?:'\w+)?|[^\w\s]")  # the words rule before CJK support


def english_lines() -> list[str]:
    lines = [EN, "Don't stop -- l'été, naïve café; 3.14 ok_go x'y'z", "", "   ", "O'Neil's  'quoted'"]
    for f in sorted(SHARED_DATA.glob("*/*.txt")):  # the real English sets, when this machine has them
        lines += f.read_text(encoding="latin-1" if f.parent.name == "trec" else "utf-8").split("\n")
    return lines


def test_english_text_tokenizes_exactly_as_before():
    for line in english_lines():
        for lower in (True, False):
            expected = _OLD_WORDS.findall(line.lower() if lower else line)
            assert tokenize(line, Tokenizer.words, lower) == expected, line


def test_jieba_missing_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "jieba", None)  # import jieba -> ImportError
    with pytest.raises(DataError, match=r"pip install 'bigmodel\[zh\]'.*data.tokenizer=chars"):
        tokenize(ZH, Tokenizer.jieba)


def test_unknown_warning_names_the_share_and_the_tokenizer_to_try():
    assert unknown_warning([[1, 2, 3], [4, 5, 6]], 1, Tokenizer.words) is None  # 1 of 6
    assert unknown_warning([[1, 2, 3], [1, 5, 6]], 1, Tokenizer.words) is None  # exactly a third: fine
    assert unknown_warning([], 1, Tokenizer.words) is None
    msg = unknown_warning([[1, 1, 3], [4, 1]], 1, Tokenizer.words)
    assert msg.startswith("60% of the validation tokens are <unk>") and "data.tokenizer=chars" in msg
    assert "data.tokenizer=words" in unknown_warning([[1]], 1, Tokenizer.whitespace)


def write_reviews(path, texts):
    rows = [f"{'pos' if i % 2 else 'neg'}\t{t}" for i, t in enumerate(texts)]
    path.write_text("label\ttext\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("tokenizer, warns", [("whitespace", True), ("words", False), ("chars", False)])
def test_data_module_warns_when_a_third_of_val_tokens_are_unknown(tmp_path, caplog, tokenizer, warns):
    train = write_reviews(tmp_path / "train.tsv", ["质量很差", "质量很好", "太差了", "太好了"] * 3)
    dev = write_reviews(tmp_path / "dev.tsv", ["很差", "很好"])  # unseen as whole clauses, seen as characters
    dm = text_csv(train, val_file=dev, tokenizer=tokenizer, min_freq=1)
    with caplog.at_level(logging.WARNING, logger="bigmodel"):
        dm.setup()
    warned = [r.message for r in caplog.records if "<unk>" in r.message]
    assert bool(warned) == warns
    if warns:
        assert warned[0].startswith("100% of the validation tokens are <unk>") and "data.tokenizer=" in warned[0]


def test_ngrams_follow_the_tokens_in_text_order():
    zh = tokenize("很好用", Tokenizer.words)
    assert with_ngrams(zh, 1) == ["很", "好", "用"]
    assert with_ngrams(zh, 2) == ["很", "好", "用", "很 好", "好 用"]
    assert with_ngrams(zh, 3) == ["很", "好", "用", "很 好", "好 用", "很 好 用"]
    mixed = tokenize("好用iPhone 12", Tokenizer.words)  # Latin words stay whole inside their n-grams
    assert with_ngrams(mixed, 2)[len(mixed) :] == ["好 用", "用 iphone", "iphone 12"]
    en = tokenize("not good .", Tokenizer.whitespace)
    assert with_ngrams(en, 2) == ["not", "good", ".", "not good", "good ."]
    assert with_ngrams(["一"], 3) == ["一"] and with_ngrams([], 2) == []


def test_vocab_with_bigrams_encodes_cut_text_then_its_bigrams_and_round_trips():
    texts = ["质量很好", "质量很差", "很好很好"]
    vocab = Vocab.build(texts, tokenizer=Tokenizer.words, ngrams=2, max_length=3)
    assert "很 好" in vocab.stoi and "质 量" in vocab.stoi and "好 很" in vocab.stoi
    # the first max_length characters, then the bigrams of those three only ("很 差" is cut off)
    assert vocab.decode(vocab.encode("质量很差")) == ["质", "量", "很", "质 量", "量 很"]
    assert vocab.decode(vocab.encode("差质")) == ["差", "质", "<unk>"]  # an unseen bigram is <unk>
    restored = Vocab.from_state(vocab.state_dict())  # the checkpoint keeps the setting: predict reads alike
    assert restored.ngrams == 2 and restored.encode("质量很差") == vocab.encode("质量很差")
    old = {k: v for k, v in Vocab.build(texts, tokenizer="words").state_dict().items() if k != "ngrams"}
    assert Vocab.from_state(old).ngrams == 1  # a checkpoint from before the option reads as before


def test_data_module_ngrams_reach_the_batches(tmp_path):
    train = write_reviews(tmp_path / "train.tsv", ["质量很差", "质量很好"] * 3)
    plain = text_csv(train, tokenizer="words", min_freq=1)
    bigrams = text_csv(train, tokenizer="words", min_freq=1, ngrams=2)
    plain.setup(), bigrams.setup()
    assert len(bigrams.vocab) == len(plain.vocab) + 4  # 质量 量很 很差 很好
    (tokens, lengths), _ = next(iter(bigrams.loader("train")))
    assert lengths.tolist() == [7] * len(lengths)  # 4 characters + 3 bigrams
    tail = bigrams.vocab.decode(tokens[0].tolist())[4:]
    assert tail in (["质 量", "量 很", "很 差"], ["质 量", "量 很", "很 好"])
