"""Attribution rules: conservation, SM-share split, idle policies."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carbonwatch.attribution import group_shares, split_interval
from carbonwatch.model import OTHER

energies = st.floats(min_value=0, max_value=1e7, allow_nan=False, allow_infinity=False)
weights = st.dictionaries(
    st.integers(min_value=1, max_value=50),
    st.floats(min_value=0, max_value=1e3, allow_nan=False, allow_infinity=False),
    max_size=8,
)


@given(energies, energies, weights, st.sampled_from(["separate", "proportional", "even"]))
def test_consumers_plus_idle_equal_the_device_energy(energy_j, idle_j, shares, policy):
    split = split_interval(energy_j, idle_j, shares, policy)
    assert math.isclose(split.total_j(), energy_j, rel_tol=1e-12, abs_tol=1e-9)
    assert split.idle_j >= 0
    assert all(v >= -1e-9 for v in split.by_consumer.values())


def test_active_energy_is_split_by_sm_share():
    split = split_interval(100.0, 20.0, {416: 85.0, 438: 15.0})
    assert split.idle_j == 20.0
    assert split.by_consumer[416] == pytest.approx(68.0)
    assert split.by_consumer[438] == pytest.approx(12.0)


def test_a_lone_active_process_gets_all_active_energy():
    split = split_interval(100.0, 30.0, {416: 40.0, 438: 0.0})
    assert split.by_consumer == {416: pytest.approx(70.0)}


def test_active_energy_with_no_process_is_unattributed_not_lost():
    split = split_interval(100.0, 30.0, {})
    assert split.by_consumer == {OTHER: 70.0}
    assert split.idle_j == 30.0


def test_proportional_policy_shares_idle_by_active_energy():
    split = split_interval(100.0, 20.0, {1: 3.0, 2: 1.0}, "proportional")
    assert split.idle_j == 0.0
    assert split.by_consumer[1] == pytest.approx(75.0)
    assert split.by_consumer[2] == pytest.approx(25.0)


def test_even_policy_shares_idle_evenly():
    split = split_interval(100.0, 20.0, {1: 3.0, 2: 1.0}, "even")
    assert split.by_consumer[1] == pytest.approx(60.0 + 10.0)
    assert split.by_consumer[2] == pytest.approx(20.0 + 10.0)


def test_negative_or_nan_energy_is_refused():
    with pytest.raises(ValueError, match="non-negative"):
        split_interval(-1.0, 0.0, {})
    with pytest.raises(ValueError):
        split_interval(float("nan"), 0.0, {})


def test_ranks_of_one_job_group_into_one_consumer():
    grouped = group_shares({10: 40.0, 11: 40.0, 99: 20.0}, {10: "job:a", 11: "job:a"})
    assert grouped == {"job:a": 80.0, OTHER: 20.0}
