"""The offline classification set worth attacking (`source: docstrings`) against known answers: which paragraphs of
a docstring are kept, and the built set's classes, their sizes and its median length under the study's tokenizer."""

from __future__ import annotations

import statistics
from collections import Counter

import yaml

from qlbench.data import docstrings, labelled

SOURCE = '''"""Module summary line that is long enough to be kept as a paragraph of prose here, surely yes.

Too short to keep.

>>> print("a doctest paragraph is code, even when it is long enough to pass the word count")
"""


class Thing:
    """A class docstring whose lines
    are joined into one paragraph: with single spaces between its words, and it has well over fifteen."""

    def method(self):
        """x = [1, 2, 3] + y[0] * 2 ** 4 - z; f(a, b) == g(c) or h(d, e, f, g, h, i, j, k) and 1 2 3 4 5"""
'''


def test_prose_paragraphs_are_kept_and_code_short_and_doctest_ones_dropped():
    got = docstrings.paragraphs(SOURCE)
    assert got == [
        "Module summary line that is long enough to be kept as a paragraph of prose here, surely yes.",
        "A class docstring whose lines are joined into one paragraph: with single spaces between its words, and it "
        "has well over fifteen.",
    ]


def test_the_study_set_has_four_balanced_classes_of_long_texts_under_the_studys_tokenizer():
    """config.yaml's `stdlib-docs`: 4 areas x 490 paragraphs, the label set the head is built from, no text in two
    areas nor in the base's pretraining corpus, median length (measured: 37 tokens of tiny-gpt2's 1,024-token BPE)
    at least 20, and the same set built twice."""
    from qlbench.data import examples, models

    config = yaml.safe_load(open("config.yaml"))
    spec = config["datasets"]["stdlib-docs"]
    train, held_out = labelled.load(spec, "stdlib-docs")
    everything = train + held_out
    assert Counter(e.response for e in everything) == {g: 490 for g in docstrings.GROUPS}
    assert labelled.label_names(spec) == list(docstrings.GROUPS) and len(docstrings.GROUPS) >= 4
    assert len(held_out) == 392 and len({e.prompt for e in everything}) == 1960
    assert labelled.load(spec, "stdlib-docs") == (train, held_out)
    base = config["models"]["tiny-gpt2"]
    corpus = examples.corpus_text(base["pretrain"]["corpus"], config["datasets"]["chatterbot"])
    assert not [e.prompt for e in everything if e.prompt in corpus]
    tokenizer = models.train_tokenizer(corpus, base["tokenizer"]["vocab_size"])
    lengths = [len(x) for x in tokenizer([e.prompt for e in everything], add_special_tokens=False)["input_ids"]]
    assert statistics.median(lengths) >= 20
    assert min(lengths) >= spec["min_words"]  # at least min_words words each
