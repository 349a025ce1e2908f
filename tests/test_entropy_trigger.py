"""The entropy trigger: non-anticipatory, 'abs' vs 'rise', nothing before the window fills."""

import math

import pytest

from sfpo_rllib.entropy_trigger import EntropyTrigger


def feed(trigger, values, start=1):
    return [trigger.observe(s, h) for s, h in enumerate(values, start=start)]


def test_no_z_and_no_trigger_before_the_window_is_full():
    t = EntropyTrigger(window=5, z_threshold=0.1, rule="abs")
    zs = feed(t, [1.0, 5.0, 0.1, 9.0])  # wild values, but only 4 of 5
    assert zs == [None] * 4
    assert t.switch_off_iteration is None
    assert t.alpha(5, 0.8) == 0.8


def test_trigger_is_non_anticipatory():
    t = EntropyTrigger(window=3, z_threshold=1.0, rule="abs")
    feed(t, [1.0, 1.0])
    z = t.observe(3, 4.0)  # buffer [1, 1, 4]: z = (4 - 2) / sqrt(2) > 1
    assert z == pytest.approx(2.0 / math.sqrt(2.0), rel=1e-6)
    assert t.switch_off_iteration == 4
    assert t.alpha(3, 0.8) == 0.8  # iteration 3 already ran with α; its own H cannot change it
    assert t.alpha(4, 0.8) == 0.0 and t.alpha(100, 0.8) == 0.0


def test_switch_off_is_for_good():
    t = EntropyTrigger(window=3, z_threshold=1.0, rule="abs")
    feed(t, [1.0, 1.0, 4.0])
    feed(t, [4.0, 4.0, 4.0, 4.0], start=4)  # calm again
    assert t.switch_off_iteration == 4 and t.alpha(7, 0.8) == 0.0


def test_abs_fires_on_a_drop_rise_does_not():
    drop = [1.0, 1.0, -2.0]
    abs_rule = EntropyTrigger(window=3, z_threshold=1.0, rule="abs")
    rise_rule = EntropyTrigger(window=3, z_threshold=1.0, rule="rise")
    feed(abs_rule, drop)
    feed(rise_rule, drop)
    assert abs_rule.switch_off_iteration == 4
    assert rise_rule.switch_off_iteration is None
    rise_rule.observe(4, 5.0)  # buffer [1, -2, 5]: a rise
    assert rise_rule.switch_off_iteration == 5


def test_constant_entropy_never_fires():
    t = EntropyTrigger(window=4, z_threshold=1.0, rule="abs")
    assert feed(t, [2.0] * 10)[-1] == 0.0
    assert t.switch_off_iteration is None


def test_state_round_trip_continues_identically():
    values = [1.0, 1.1, 0.9, 1.0, 1.05, 3.0, 1.0]
    whole = EntropyTrigger(window=4, z_threshold=1.5, rule="rise")
    feed(whole, values)
    first = EntropyTrigger(window=4, z_threshold=1.5, rule="rise")
    feed(first, values[:3])
    resumed = EntropyTrigger(window=4, z_threshold=1.5, rule="rise")
    resumed.set_state(first.get_state())
    feed(resumed, values[3:], start=4)
    assert resumed.get_state() == whole.get_state()


def test_bad_rule_and_non_finite_entropy_are_errors():
    with pytest.raises(ValueError, match="valid: abs, rise"):
        EntropyTrigger(window=3, z_threshold=1.0, rule="both")
    with pytest.raises(ValueError, match="non-finite"):
        EntropyTrigger(window=3, z_threshold=1.0, rule="abs").observe(1, float("nan"))
