"""Which slices of a volume (frames of a cine) become samples, their 2.5D slabs, and how sample
predictions become one prediction per item."""
from __future__ import annotations

import numpy as np
import pytest

from medxfer.core.errors import MedxferError
from medxfer.engine.slices import (
    SliceSelection,
    SliceSettingError,
    aggregate_probabilities,
    check_aggregate,
    check_channels,
    check_input,
    check_slices,
    slab,
)


def pick(value: str, n: int, labelled=()) -> list[int]:
    return SliceSelection.parse(value).select(n, labelled)


@pytest.mark.parametrize("value, n, expected", [
    ("all", 5, [0, 1, 2, 3, 4]),
    ("center", 5, [2]),
    ("center", 4, [2]),  # n // 2: the upper middle of an even count
    ("every:1", 4, [0, 1, 2, 3]),
    ("every:2", 5, [0, 2, 4]),
    ("every:3", 10, [0, 3, 6, 9]),
    ("every:50", 10, [0]),  # a step longer than the volume: its first slice
    ("range:0-1", 6, [0, 1, 2, 3, 4, 5]),
    ("range:0.25-0.75", 10, [3, 4, 5, 6]),  # ceil(2.25) … floor(6.75)
    ("range:0.2-0.8", 11, [2, 3, 4, 5, 6, 7, 8]),  # ends that fall on a slice keep it
    ("range:.5-.5", 11, [5]),
    ("range:0.5-0.52", 10, [5]),  # narrower than one slice: the slice nearest the middle (4.59)
    ("range:0-0.01", 10, [0]),
    ("range:0.99-1", 10, [9]),
    ("labelled", 6, [1, 4]),
])
def test_every_mode_picks_the_documented_slices(value, n, expected):
    assert pick(value, n, labelled=[4, 1, 4, 9, -1]) == expected  # 9 and -1 lie outside a 6- or 10-slice item


@pytest.mark.parametrize("value", ["all", "center", "every:3", "range:0.25-0.75", "range:0.9-0.95", "range:0-0"])
def test_a_single_slice_item_always_gives_its_one_slice(value):
    assert pick(value, 1) == [0]


@pytest.mark.parametrize("value", ["all", "center", "every:2", "range:0.1-0.2", "labelled"])
def test_an_empty_item_gives_no_sample(value):
    assert pick(value, 0, labelled=[0]) == []


def test_labelled_keeps_only_slices_with_their_own_label():
    assert pick("labelled", 8) == []  # a volume without per-slice labels gives no sample
    assert pick("labelled", 8, labelled={7: 1, 0: 0}) == [0, 7]  # a dict of slice -> label works too


def test_range_never_leaves_an_item_empty_and_stays_inside_it():
    for n in range(1, 40):
        for lo, hi in [(0.0, 0.0), (0.31, 0.33), (0.5, 0.51), (0.97, 1.0), (0.25, 0.75)]:
            got = SliceSelection("range", low=lo, high=hi).select(n)
            assert got and got == sorted(set(got)) and 0 <= got[0] and got[-1] < n, (n, lo, hi)


def test_values_are_read_case_and_space_insensitively():
    assert SliceSelection.parse(" ALL ") == SliceSelection("all")
    assert SliceSelection.parse("Every:4") == SliceSelection("every", step=4)
    assert SliceSelection.parse("RANGE:0.2-0.8") == SliceSelection("range", low=0.2, high=0.8)
    assert check_slices(None) is None and check_slices("center") == SliceSelection("center")
    assert check_input(None) == "2d" and check_input("2.5D") == "2.5d"
    assert check_aggregate(None) == "mean" and check_aggregate(" TOP:3 ") == "top:3" and check_aggregate("max") == "max"


@pytest.mark.parametrize("value, message", [
    ("some", "slices: 'some' is not one of all, center, every:K, range:LO-HI, labelled"),
    ("every:0", "every:K needs K >= 1"),
    ("every:-2", "is not one of"),
    ("every:two", "is not one of"),
    ("range:0.8-0.2", "range:LO-HI needs 0 <= LO <= HI <= 1"),
    ("range:0.2-1.5", "fractions of the slice axis"),
    ("range:20-80", "needs 0 <= LO <= HI <= 1"),
    ("range:0.2", "is not one of"),
])
def test_a_bad_slices_value_is_a_clear_error(value, message):
    with pytest.raises(SliceSettingError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        check_slices(value)
    assert isinstance(e.value, MedxferError) and isinstance(e.value, ValueError)
    assert "\n" not in str(e.value) and repr(value) in str(e.value)


def test_bad_input_and_aggregate_values_are_clear_errors():
    assert check_input("3D") == "3d"  # whole volumes for the 3D networks
    with pytest.raises(SliceSettingError, match=r"input: '25d' is not one of 2d, 2\.5d, 3d"):
        check_input("25d")
    for bad in ("median", "top:0", "top:", "top:k", "max:2"):
        with pytest.raises(SliceSettingError, match=rf"aggregate: '{bad}' is not one of mean, max, top:K \(K >= 1\)"):
            check_aggregate(bad)
    with pytest.raises(SliceSettingError, match="aggregate: 'median'"):
        aggregate_probabilities(np.full((2, 2), 0.5), ["a", "a"], "median")


def test_two_and_a_half_d_needs_a_three_channel_network():
    check_channels("2.5d", 3)
    check_channels("2.5d", "3")  # as a config may hold it
    check_channels("2d", 1)
    check_channels("2d", 3)
    check_channels(None, 1)
    with pytest.raises(SliceSettingError, match=r"input: 2\.5d makes 3-channel samples.*in_channels is 1: set "
                                                r"in_channels: 3"):
        check_channels("2.5d", 1)
    check_channels("3d", 1)  # a volume is one channel for the 3D networks


def test_a_slab_is_the_slice_and_its_neighbours_with_the_end_slice_repeated():
    assert [slab(k, 5, "2.5d") for k in range(5)] == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 4]]
    assert slab(0, 1, "2.5d") == [0, 0, 0]  # a one-slice volume: the slice three times
    assert slab(0, 2, "2.5d") == [0, 0, 1] and slab(1, 2, "2.5d") == [0, 1, 1]
    assert [slab(k, 5, "2d") for k in (0, 2, 4)] == [[0], [2], [4]]


def test_binary_aggregation_per_item_in_order_of_first_appearance():
    p1 = np.array([0.1, 0.2, 0.3, 0.8, 0.5, 0.9])
    ids = ["b", "a", "b", "a", "a", "c"]  # samples of items interleaved (a shuffled loader, several workers)
    prob = np.stack([1 - p1, p1], 1)
    expected = {"mean": {"b": 0.2, "a": 0.5, "c": 0.9}, "max": {"b": 0.3, "a": 0.8, "c": 0.9},
                "top:1": {"b": 0.3, "a": 0.8, "c": 0.9}, "top:2": {"b": 0.2, "a": 0.65, "c": 0.9},
                "top:10": {"b": 0.2, "a": 0.5, "c": 0.9}}  # K above an item's sample count: all of them
    for how, want in expected.items():
        items, out = aggregate_probabilities(prob, ids, how)
        assert items == ["b", "a", "c"]
        assert out.shape == (3, 2) and np.allclose(out[:, 1], [want[i] for i in items]), how
        assert np.allclose(out.sum(1), 1.0)  # P(negative) = 1 − the aggregated P(positive)


def test_max_marks_an_item_by_its_most_suspicious_slice():
    # one positive slice among many negatives: the item is positive by max, not by mean
    prob = np.array([[0.95, 0.05]] * 9 + [[0.1, 0.9]])
    _, mean = aggregate_probabilities(prob, ["v"] * 10, "mean")
    _, top = aggregate_probabilities(prob, ["v"] * 10, "max")
    assert mean[0, 1] < 0.5 < top[0, 1] and np.isclose(top[0, 0], 0.1)


def test_three_class_aggregation_is_per_class_and_renormalised():
    prob = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.2, 0.6, 0.2], [1 / 3, 1 / 3, 1 / 3]])
    ids = ["x", "x", "y", "z"]
    items, mean = aggregate_probabilities(prob, ids, "mean")
    assert items == ["x", "y", "z"] and np.allclose(mean, [[0.4, 0.15, 0.45], [0.2, 0.6, 0.2], [1 / 3] * 3])
    _, top = aggregate_probabilities(prob, ids, "max")
    assert np.allclose(top[0], np.array([0.7, 0.2, 0.8]) / 1.7) and np.allclose(top.sum(1), 1.0)
    _, top1 = aggregate_probabilities(prob, ids, "top:1")
    assert np.allclose(top1, top)


def test_one_sample_per_item_is_returned_unchanged():
    rng = np.random.default_rng(0)
    prob = rng.dirichlet([1, 1], size=6)
    items, out = aggregate_probabilities(prob, [f"i{k}" for k in range(6)], "top:3")
    assert items == [f"i{k}" for k in range(6)] and np.allclose(out, prob)


def test_mismatched_probabilities_are_an_error():
    with pytest.raises(ValueError, match=r"\(3, 2\) probabilities for 2 samples"):
        aggregate_probabilities(np.full((3, 2), 0.5), ["a", "b"])
    with pytest.raises(ValueError, match="probabilities for"):
        aggregate_probabilities(np.full(3, 0.5), ["a", "b", "c"])
