"""Compute heterogeneity: the simulated clock, round deadlines and stragglers (fedlora.engine.clock)."""

from __future__ import annotations

import pytest

from fedlora.engine.clock import ClientClock, client_clocks, schedule_round


def test_client_time_is_steps_over_speed_plus_bytes_over_link():
    clock = ClientClock(speed=2.0, link=1e6)
    assert clock.seconds(10, 3_000_000) == pytest.approx(10 / 2 + 3.0)
    assert ClientClock(4.0).seconds(10, 10**9) == pytest.approx(2.5)  # no link: transfers are free


def test_without_deadline_the_round_waits_for_the_slowest():
    clocks = {"fast": ClientClock(10.0), "slow": ClientClock(1.0)}
    work, length = schedule_round(clocks, 10, {}, deadline=0)
    assert {c: w.steps for c, w in work.items()} == {"fast": 10, "slow": 10}
    assert length == pytest.approx(10.0) and not any(w.straggler for w in work.values())


def test_deadline_drops_or_cuts_a_client_ten_times_slower():
    clocks = {"a": ClientClock(10.0), "b": ClientClock(10.0), "slow": ClientClock(1.0, link=1e6)}
    moved = {"slow": 2_000_000}  # 2 s of transfers
    dropped, length = schedule_round(clocks, 10, moved, deadline=5.0, policy="drop")
    assert dropped["slow"].steps == 0 and dropped["slow"].straggler and length == pytest.approx(5.0)
    assert dropped["a"].steps == 10 and not dropped["a"].straggler
    partial, _ = schedule_round(clocks, 10, moved, deadline=5.0, policy="partial")
    assert partial["slow"].steps == 3 and partial["slow"].seconds == pytest.approx(3 / 1.0 + 2.0)  # ⌊(5 − 2)·1⌋
    # a deadline that nobody misses ends the round when the slowest finishes
    _, early = schedule_round({"a": ClientClock(10.0)}, 10, {}, deadline=5.0)
    assert early == pytest.approx(1.0)


def test_bad_speeds_and_policies_are_clear_errors():
    with pytest.raises(ValueError, match="speed must be a positive"):
        ClientClock(0.0)
    with pytest.raises(ValueError, match="one speed per client"):
        client_clocks(["a", "b"], [1.0], 0.0)
    with pytest.raises(ValueError, match="stragglers policy"):
        schedule_round({"a": ClientClock()}, 1, {}, 1.0, "wait")
