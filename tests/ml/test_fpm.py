"""shoal.ml.fpm: FPGrowth and PrefixSpan against Spark's documented examples and against
brute-force counting (exact: itemsets, counts, confidence, lift and support agree to 1e-12)."""
from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import shoal.data as sd
import shoal.ml as ml
from shoal.exceptions import InvalidInputError
from shoal.ml.fpm import FPGrowth, PrefixSpan
from tests.ml._cluster import cluster  # noqa: F401


def _as_dict(frame, key="items"):
    return {tuple(sorted(s)): int(f) for s, f in zip(frame[key], frame["freq"])}


@pytest.fixture(scope="module")
def baskets():
    rng = np.random.default_rng(0)
    return [sorted(set(rng.zipf(1.5, rng.integers(1, 10)).tolist())) for _ in range(1500)]


def _brute_force(baskets, min_support):
    c = Counter()
    for t in baskets:
        for k in range(1, len(t) + 1):
            c.update(itertools.combinations(t, k))
    need = np.ceil(min_support * len(baskets))
    return {s: v for s, v in c.items() if v >= need}


def test_fpgrowth_reproduces_sparks_example():
    # pyspark.ml.fpm.FPGrowth's documented example
    model = FPGrowth(min_support=0.5, min_confidence=0.6).fit([[1, 2, 5], [1, 2, 3, 5], [1, 2]])
    assert _as_dict(model.freq_itemsets_) == {(1,): 3, (2,): 3, (5,): 2, (1, 2): 3, (1, 5): 2,
                                              (2, 5): 2, (1, 2, 5): 2}
    rules = {(tuple(sorted(a)), c[0]): (conf, lift, sup) for a, c, conf, lift, sup in
             model.association_rules_.itertuples(index=False)}
    assert len(rules) == 9
    assert rules[((1, 2), 5)] == pytest.approx((2 / 3, 1.0, 2 / 3))
    assert rules[((5,), 1)] == pytest.approx((1.0, 1.0, 2 / 3))
    assert model.transform([[1, 2, 5], [1, 2, 3, 5], [1, 2]]) == [[], [], [5]]


def test_fpgrowth_matches_brute_force_locally_and_on_a_dataset(baskets, cluster):  # noqa: F811
    want = _brute_force(baskets, 0.02)
    local = FPGrowth(min_support=0.02, min_confidence=0.3).fit(baskets)
    assert _as_dict(local.freq_itemsets_) == want
    n = len(baskets)
    for ante, cons, conf, lift, sup in local.association_rules_.itertuples(index=False):
        full = tuple(sorted(ante + cons))
        assert conf == pytest.approx(want[full] / want[tuple(sorted(ante))], abs=1e-12)
        assert lift == pytest.approx(conf / (want[tuple(cons)] / n), abs=1e-12)
        assert sup == pytest.approx(want[full] / n, abs=1e-12) and conf >= 0.3
    n_rules = sum(1 for s in want if len(s) > 1 for j in range(len(s))
                  if want[s] / want[s[:j] + s[j + 1:]] >= 0.3)
    assert len(local.association_rules_) == n_rules
    ds = sd.from_arrow(pa.table({"basket": pa.array(baskets), "id": np.arange(n)})).repartition(3)
    dist = FPGrowth(min_support=0.02, min_confidence=0.3, num_partitions=3).fit(ds, features=["basket"])
    assert _as_dict(dist.freq_itemsets_) == want
    pd.testing.assert_frame_equal(dist.association_rules_, local.association_rules_)
    out = dist.transform(ds).to_pandas()
    assert out["id"].tolist() == list(range(n))
    assert [list(p) for p in out["prediction"]] == local.transform(baskets)


def test_fpgrowth_takes_string_items_in_a_dataframe():
    frame = pd.DataFrame({"items": [["milk", "bread"], ["milk", "eggs"], ["milk", "bread", "eggs"]]})
    model = FPGrowth(min_support=0.6, min_confidence=0.9).fit(frame)
    assert _as_dict(model.freq_itemsets_) == {("milk",): 3, ("bread",): 2, ("eggs",): 2,
                                              ("bread", "milk"): 2, ("eggs", "milk"): 2}
    out = model.transform(pd.DataFrame({"items": [["bread"], ["milk"]]}))
    assert out["prediction"].tolist() == [["milk"], []]


def test_fpgrowth_rejects_duplicates_nulls_and_bad_columns(cluster):  # noqa: F811
    with pytest.raises(InvalidInputError, match=r"must be unique but got \[3, 3\].*'basket'"):
        FPGrowth().fit(sd.from_arrow(pa.table({"basket": [[1, 2], [3, 3]]})), features=["basket"])
    with pytest.raises(InvalidInputError, match="null transaction"):
        FPGrowth().fit(pa.table({"items": pa.array([[1], None])}))
    with pytest.raises(InvalidInputError, match="must hold a list of items"):
        FPGrowth().fit(sd.from_arrow(pa.table({"items": [1, 2]})))
    with pytest.raises(InvalidInputError, match="column 'basket' is missing"):
        FPGrowth().fit(pd.DataFrame({"items": [[1]]}), features=["basket"])
    with pytest.raises(InvalidInputError, match="min_support"):
        FPGrowth(min_support=1.5).fit([[1]])


def _contains(seq, pattern):
    k = 0
    for itemset in seq:
        if k < len(pattern) and set(pattern[k]) <= set(itemset):
            k += 1
    return k == len(pattern)


def test_prefixspan_reproduces_sparks_example():
    seqs = [[[1, 2], [3]], [[1], [3, 2], [1, 2]], [[1, 2], [5]], [[6]]]
    out = PrefixSpan(min_support=0.5, max_pattern_length=5).find_frequent_sequential_patterns(seqs)
    got = {tuple(map(tuple, s)): f for s, f in zip(out["sequence"], out["freq"])}
    assert got == {((1,),): 3, ((2,),): 3, ((3,),): 2, ((1, 2),): 3, ((1,), (3,)): 2}


def test_prefixspan_finds_every_pattern_with_its_support(cluster):  # noqa: F811
    rng = np.random.default_rng(0)
    data = [[sorted(set(rng.integers(0, 8, rng.integers(1, 4)).tolist()))
             for _ in range(rng.integers(1, 6))] for _ in range(300)]
    out = PrefixSpan(min_support=0.1, max_pattern_length=4).find_frequent_sequential_patterns(data)
    assert all(sum(_contains(s, p) for s in data) == f for p, f in zip(out["sequence"], out["freq"]))
    found = {tuple(map(tuple, p)) for p in out["sequence"]}
    assert len(found) == len(out) and max(sum(map(len, p)) for p in found) <= 4
    need = np.ceil(0.1 * len(data))
    for a, b in itertools.product(range(8), repeat=2):     # every frequent 2-item pattern is found
        for p in ([[a], [b]],) + (([[a, b]],) if a < b else ()):
            if sum(_contains(s, p) for s in data) >= need:
                assert tuple(map(tuple, p)) in found
    ds = sd.from_arrow(pa.table({"seq": pa.array(data)})).repartition(3)
    dist = PrefixSpan(min_support=0.1, max_pattern_length=4, sequence_col="seq") \
        .find_frequent_sequential_patterns(ds)
    assert {tuple(map(tuple, p)): f for p, f in zip(dist["sequence"], dist["freq"])} == \
        {tuple(map(tuple, p)): f for p, f in zip(out["sequence"], out["freq"])}


def test_prefixspan_rejects_a_column_of_flat_lists():
    with pytest.raises(InvalidInputError, match="sequence of itemsets"):
        PrefixSpan().find_frequent_sequential_patterns(pa.table({"sequence": [[1, 2]]}))
