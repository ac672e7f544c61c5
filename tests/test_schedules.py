import math

import pytest

from autotune.train.schedules import ScheduleParams, lr_at, lr_curve


def test_wsd_warmup_stable_decay():
    p = ScheduleParams(kind="wsd", peak_lr=1e-3, warmup_fraction=0.1, decay_fraction=0.2, final_lr_ratio=0.1)
    lr = lr_curve(100, p)
    assert lr[0] == pytest.approx(1e-4)  # warmup starts above 0
    assert lr[9] == pytest.approx(1e-3)  # end of warmup: peak
    assert all(x == pytest.approx(1e-3) for x in lr[10:80])  # stable phase
    assert all(a > b for a, b in zip(lr[80:], lr[81:], strict=False))  # strictly decaying
    assert lr[-1] == pytest.approx(1e-4)  # last step at final_lr_ratio * peak


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_decaying_schedules_end_at_final(kind):
    p = ScheduleParams(kind=kind, peak_lr=2e-3, warmup_fraction=0.05, final_lr_ratio=0.0)
    lr = lr_curve(200, p)
    assert max(lr) == pytest.approx(2e-3)
    assert lr[-1] == pytest.approx(0.0, abs=1e-12)
    after = lr[10:]
    assert all(a >= b for a, b in zip(after, after[1:], strict=False))


def test_cosine_midpoint_and_linear_midpoint_differ_as_expected():
    cos = ScheduleParams(kind="cosine", peak_lr=1.0)
    lin = ScheduleParams(kind="linear", peak_lr=1.0)
    # with no warmup, halfway through: cosine 0.5*(1+cos(pi*0.5)) = 0.5, linear 0.5
    assert lr_at(49, 100, cos) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)), abs=0.02)
    assert lr_at(24, 100, cos) > lr_at(24, 100, lin)  # cosine stays high early


def test_constant_and_bounds():
    p = ScheduleParams(kind="constant", peak_lr=3e-4, warmup_fraction=0.5)
    assert lr_at(99, 100, p) == 3e-4
    with pytest.raises(ValueError, match="outside"):
        lr_at(100, 100, p)
    with pytest.raises(ValueError, match="unknown schedule kind"):
        ScheduleParams(kind="step", peak_lr=1.0)


def test_wsd_without_decay_is_constant_after_warmup():
    p = ScheduleParams(kind="wsd", peak_lr=1.0, warmup_fraction=0.0, decay_fraction=0.0)
    assert set(lr_curve(10, p)) == {1.0}


@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt"])
def test_wsd_decay_shapes(shape):
    p = ScheduleParams(kind="wsd", peak_lr=1.0, warmup_fraction=0.0, decay_fraction=0.5, final_lr_ratio=0.0,
                       decay_shape=shape)
    lr = lr_curve(100, p)
    assert lr[:50] == [1.0] * 50 and lr[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a > b for a, b in zip(lr[49:], lr[50:], strict=False))
    mid = lr[74]  # progress 25/50 = 0.5 of the decay
    expect = {"linear": 0.5, "cosine": 0.5, "1-sqrt": 1 - math.sqrt(0.5)}[shape]
    assert mid == pytest.approx(expect, abs=1e-9)
    quarter = lr[61]  # progress 12/50 = 0.24
    assert quarter == pytest.approx({"linear": 0.76, "cosine": 0.5 * (1 + math.cos(math.pi * 0.24)),
                                     "1-sqrt": 1 - math.sqrt(0.24)}[shape])


def test_warmup_from_the_base_runs_final_lr():
    p = ScheduleParams(kind="wsd", peak_lr=1e-3, warmup_fraction=0.1, decay_fraction=0.2, start_lr=3e-4)
    lr = lr_curve(100, p)
    assert lr[0] == pytest.approx(3e-4)
    assert lr[5] == pytest.approx(3e-4 + 0.7e-3 * 5 / 10)
    assert lr[10] == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(lr[:10], lr[1:11], strict=False))
    with pytest.raises(ValueError, match="decay shape"):
        ScheduleParams(kind="wsd", peak_lr=1.0, decay_shape="exp")
