"""Power, saturating and frontier fits; bootstrap intervals; the hold-out check."""

import json

import numpy as np
import pytest

from clipscale.scaling import (
    fit_curve,
    fit_frontier,
    fit_power,
    fit_saturating,
    frontier_mask,
    holdout,
)

X = np.geomspace(1e15, 1e19, 10)


def power_data(a=0.9, b=0.15, sd=0.0, seed=0, x=X):
    rng = np.random.default_rng(seed)
    # a is the error at x = 1e15, so a * x^-b with x in FLOPs is a * 1e15^b * x^-b.
    y = a * (x / 1e15) ** (-b) * np.exp(rng.normal(0.0, sd, len(x)))
    return x, y, a * 1e15**b


def test_power_recovers_exact_law():
    x, y, a_true = power_data()
    fit = fit_power(x, y)
    assert fit.params["b"] == pytest.approx(0.15, rel=1e-9)
    assert fit.params["a"] == pytest.approx(a_true, rel=1e-8)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)
    assert np.abs(fit.residuals).max() < 1e-10
    assert fit.n_points == len(x)
    np.testing.assert_allclose(fit.predict(x), y, rtol=1e-9)


def test_power_bootstrap_is_seeded_and_brackets_estimate():
    x, y, _ = power_data(sd=0.05, seed=3)
    f1 = fit_power(x, y, n_boot=300, seed=7)
    f2 = fit_power(x, y, n_boot=300, seed=7)
    f3 = fit_power(x, y, n_boot=300, seed=8)
    assert f1.ci == f2.ci
    assert f1.ci != f3.ci
    for k in ("a", "b"):
        lo, hi = f1.ci[k]
        assert lo < f1.params[k] < hi
    assert f1.ci_method == "bootstrap" and f1.boot_params.shape == (300, 2)


def test_power_without_bootstrap_gives_t_intervals():
    x, y, _ = power_data(sd=0.05, seed=3)
    fit = fit_power(x, y)
    assert fit.ci_method == "ols-t"
    lo, hi = fit.ci["b"]
    assert lo < fit.params["b"] < hi and hi - lo < 0.1


def test_power_bootstrap_coverage_near_nominal():
    """The true exponent falls inside the 90% interval at about the nominal rate."""
    level, seeds, hits = 0.9, 150, np.zeros(2)
    for s in range(seeds):
        x, y, a_true = power_data(sd=0.05, seed=1000 + s)
        fit = fit_power(x, y, n_boot=150, seed=s, level=level)
        hits += [fit.ci["a"][0] <= a_true <= fit.ci["a"][1], fit.ci["b"][0] <= 0.15 <= fit.ci["b"][1]]
    rate = hits / seeds
    # Percentile intervals from a pairs bootstrap on 10 points run a few points below
    # nominal (~0.85 measured); 0.75 is > 3 binomial sd below that.
    assert np.all(rate >= 0.75), rate
    assert np.all(rate <= 0.98), rate


def test_prediction_interval_widens_when_extrapolating():
    x, y, _ = power_data(sd=0.05, seed=5)
    fit = fit_power(x, y, n_boot=300, seed=0)
    mid, far = np.sqrt(X[0] * X[-1]), X[-1] * 1e3
    lo, hi = fit.predict_interval([mid, far])
    assert np.all(lo < fit.predict([mid, far])) and np.all(fit.predict([mid, far]) < hi)
    assert (hi[1] - lo[1]) / fit.predict(far) > 2 * (hi[0] - lo[0]) / fit.predict(mid)


def test_saturating_recovers_floor_and_exponent():
    rng = np.random.default_rng(11)
    x = np.geomspace(1e15, 1e20, 12)
    y = 0.2 + 0.7 * (x / 1e15) ** -0.3 * np.exp(rng.normal(0, 0.005, len(x)))
    fit = fit_saturating(x, y, n_boot=100, seed=0)
    assert fit.params["E_inf"] == pytest.approx(0.2, abs=0.01)
    assert fit.params["b"] == pytest.approx(0.3, rel=0.05)
    assert fit.params["a"] * 1e15 ** -fit.params["b"] == pytest.approx(0.7, rel=0.05)
    assert 0 <= fit.ci["E_inf"][0] <= 0.2 <= fit.ci["E_inf"][1] <= y.min()
    assert fit.r2 > 0.999
    # The fitted floor is physical: below every observed error.
    assert fit.params["E_inf"] <= y.min()


def test_saturating_on_pure_power_law_finds_no_floor():
    x, y, a_true = power_data(b=0.2)
    fit = fit_saturating(x, y)
    assert fit.params["E_inf"] < 1e-3
    assert fit.params["b"] == pytest.approx(0.2, rel=0.02)


def test_saturating_is_robust_to_one_bad_rung():
    x = np.geomspace(1e15, 1e20, 12)
    y = 0.2 + 0.7 * (x / 1e15) ** -0.3
    y_bad = y.copy()
    y_bad[5] *= 1.6  # e.g. a rung whose training diverged
    robust = fit_saturating(x, y_bad)
    # Without the Huber loss the same point drags the exponent a long way.
    squared = fit_saturating(x, y_bad, huber_delta=10.0)
    assert abs(robust.params["b"] - 0.3) < 0.02
    assert abs(robust.params["E_inf"] - 0.2) < 0.01
    assert abs(robust.params["b"] - 0.3) < 0.25 * abs(squared.params["b"] - 0.3)


def test_frontier_mask_handles_ties_and_dominated_runs():
    x = np.array([1, 1, 2, 2, 3, 4, 4, 5.0])
    y = np.array([0.9, 0.8, 0.85, 0.7, 0.75, 0.6, 0.65, 0.61])
    # x=1: both are cheaper than nothing -> on the frontier; x=2: 0.85 > 0.8 is dominated;
    # x=3: 0.75 > 0.7; x=4: both < 0.7; x=5: 0.61 > 0.6.
    expected = [True, True, False, True, False, True, True, False]
    assert frontier_mask(x, y).tolist() == expected


def test_frontier_fit_ignores_dominated_runs():
    # Several sample counts per model (Cherti et al. 2023): undertrained runs sit above
    # the frontier and must not bend the fit.
    xf, yf, _ = power_data(sd=0.0)
    rng = np.random.default_rng(0)
    xd = xf[1:] * 1.01
    yd = yf[:-1] * rng.uniform(1.05, 1.5, len(xd))  # costlier than a frontier run, but worse
    x, y = np.concatenate([xf, xd]), np.concatenate([yf, yd])
    fit = fit_frontier(x, y, n_boot=50)
    assert fit.frontier_mask.sum() == len(xf)
    assert fit.params["b"] == pytest.approx(0.15, rel=1e-9)
    assert fit_power(x, y).params["b"] != pytest.approx(0.15, rel=0.05)
    assert fit.to_dict()["n_frontier"] == len(xf)


def test_holdout_on_a_true_law_predicts_the_largest_rungs():
    x, y, _ = power_data(sd=0.01, seed=2)
    h = holdout(x, y, 2, labels=[f"r{i}" for i in range(len(x))], n_boot=100)
    assert [p.x for p in h.points] == list(x[-2:])
    assert [p.label for p in h.points] == ["r8", "r9"]
    assert h.fit.n_points == len(x) - 2
    for p in h.points:
        assert p.abs_error == pytest.approx(abs(p.predicted - p.actual))
        assert p.rel_error == pytest.approx(p.abs_error / p.actual)
        assert p.rel_error < 0.05
        assert p.lo < p.predicted < p.hi


def test_holdout_detects_a_break_in_the_trend():
    x, y, _ = power_data()
    y = y.copy()
    y[-2:] *= 1.3  # the trend flattens at the top
    h = holdout(x, y, 2)
    assert h.mean_rel_error > 0.2


@pytest.mark.parametrize("form", ["power", "saturating", "frontier"])
def test_to_dict_is_strict_json(form):
    x, y, _ = power_data(sd=0.02, seed=1)
    fit = fit_curve(x, y, form, n_boot=20)
    d = json.loads(json.dumps(fit.to_dict(), allow_nan=False))
    assert d["form"] == form
    assert set(fit.param_names) <= set(d["ci"])
    assert d["n_points"] == fit.n_points and len(d["residuals"]) == fit.n_points


def test_bad_inputs_are_rejected_with_reasons():
    with pytest.raises(ValueError, match="positive"):
        fit_power([1, 2, 3], [0.5, -0.1, 0.2])
    with pytest.raises(ValueError, match="same length"):
        fit_power([1, 2, 3], [0.5, 0.4])
    with pytest.raises(ValueError, match="distinct x"):
        fit_power([2, 2, 2], [0.5, 0.4, 0.3])
    with pytest.raises(ValueError, match="unknown form"):
        fit_curve([1, 2, 3], [0.5, 0.4, 0.3], "cubic")
    with pytest.raises(ValueError, match="fewer than 2 distinct"):
        holdout([1, 2, 3], [0.5, 0.4, 0.3], 2)
