"""Which test each column gets under each method, and when a dataset counts as drifted."""

from __future__ import annotations

import pytest

from modelrun.drift.methods import DATASET_SHARE, METHODS, check_method, choose_test, dataset_drift
from modelrun.drift.stattests import TESTS
from modelrun.errors import InvalidInput

# method, kind, n_reference, distinct over reference + current (None: more than are counted), test
CHOICES = [
    # Evidently, reference of at most 1000 values
    ("evidently", "numerical", 1000, 1, "z"),
    ("evidently", "numerical", 500, 2, "z"),
    ("evidently", "numerical", 500, 3, "chisquare"),
    ("evidently", "numerical", 500, 5, "chisquare"),
    ("evidently", "numerical", 500, 6, "ks"),
    ("evidently", "numerical", 1000, None, "ks"),
    ("evidently", "categorical", 500, 1, "z"),
    ("evidently", "categorical", 1000, 2, "z"),
    ("evidently", "categorical", 500, 3, "chisquare"),
    ("evidently", "categorical", 500, 40, "chisquare"),
    ("evidently", "categorical", 500, None, "chisquare"),
    ("evidently", "numerical", 0, 0, "z"),
    # Evidently, reference of more than 1000 values
    ("evidently", "numerical", 1001, 1, "jensenshannon"),
    ("evidently", "numerical", 5000, 5, "jensenshannon"),
    ("evidently", "numerical", 1001, 6, "wasserstein"),
    ("evidently", "numerical", 5000, None, "wasserstein"),
    ("evidently", "categorical", 1001, 2, "jensenshannon"),
    ("evidently", "categorical", 5000, 3, "jensenshannon"),
    ("evidently", "categorical", 5000, None, "jensenshannon"),
    # Vertex: the same test whatever the sizes
    ("vertex", "categorical", 10, 2, "linf"),
    ("vertex", "categorical", 50000, None, "linf"),
    ("vertex", "numerical", 10, 2, "js_divergence"),
    ("vertex", "numerical", 50000, None, "js_divergence"),
]


@pytest.mark.parametrize("method,kind,n_reference,distinct,test", CHOICES)
def test_choice_of_test(method, kind, n_reference, distinct, test):
    assert choose_test(method, kind, n_reference, distinct) == test


@pytest.mark.parametrize("method,kind,n_reference,distinct,test", CHOICES)
def test_every_chosen_test_applies_to_the_column_kind(method, kind, n_reference, distinct, test):
    assert kind in TESTS[choose_test(method, kind, n_reference, distinct)].kinds


def test_text_columns_get_no_test():
    with pytest.raises(InvalidInput, match="no drift test for 'text' columns"):
        choose_test("evidently", "text", 100, None)


@pytest.mark.parametrize("call", [lambda: check_method("nannyml"), lambda: choose_test("nannyml", "numerical", 5, 5),
                                  lambda: dataset_drift("nannyml", 1, 2)])
def test_unknown_method_names_the_valid_ones(call):
    with pytest.raises(InvalidInput) as error:
        call()
    assert error.value.message == "unknown method 'nannyml'; valid methods: evidently, vertex"


def test_known_methods_pass_the_check():
    assert [check_method(m) for m in METHODS] == ["evidently", "vertex"]


@pytest.mark.parametrize("method,drifted,total,expected", [
    ("evidently", 5, 10, True),  # share >= 0.5
    ("evidently", 4, 10, False),
    ("evidently", 1, 2, True),
    ("evidently", 1, 3, False),
    ("evidently", 3, 3, True),
    ("evidently", 0, 0, False),
    ("vertex", 1, 50, True),  # one drifted feature raises the alert
    ("vertex", 0, 50, False),
    ("vertex", 0, 0, False),
])
def test_dataset_drift(method, drifted, total, expected):
    assert dataset_drift(method, drifted, total) is expected


def test_dataset_share_documents_each_rule():
    assert DATASET_SHARE == {"evidently": 0.5, "vertex": None}
