"""The numerics every scaling fit shares, and the one interface all fits answer to."""

import numpy as np
import pytest
from scipy import optimize

from clipscale.scaling import LAWS, ScalingLaw, fit_law, load_runs
from clipscale.scaling.bootstrap import bootstrap_samples
from clipscale.scaling.numerics import best_of, huber, huber_grad, log_r2, positive_columns, require_points, spans
from tests.test_scaling_mlflow import make_ladder_store

X = np.geomspace(1e15, 1e19, 8)


def joint_data(noise=0.0, seed=0):
    n = np.repeat(np.geomspace(1e6, 1e8, 4), 3)
    d = np.tile(np.geomspace(1e8, 1e10, 3), 4)
    loss = 1.7 + 400 / n**0.34 + 2000 / d**0.37
    return n, d, loss * np.exp(np.random.default_rng(seed).normal(0, noise, len(n)))


def law_data(form, noise=0.0):
    """Inputs and target for a form: (x, y), or (N, D, loss) for joint_nd."""
    if form == "joint_nd":
        return joint_data(noise)
    y = 0.2 + 3.0 * (X / 1e15) ** -0.3 if form == "saturating" else 3.0 * (X / 1e15) ** -0.3
    return X, y * np.exp(np.random.default_rng(1).normal(0, noise, len(X)))


# ------------------------------------------------------------ input checks


def test_positive_columns_returns_flat_float_arrays():
    x, y = positive_columns(("x", "y"), [[1, 2], [3, 4]], (0.5, 0.4, 0.3, 0.2))
    assert x.dtype == float and x.shape == (4,) and y.tolist() == [0.5, 0.4, 0.3, 0.2]


@pytest.mark.parametrize(
    "columns, message",
    [
        (([1, 2, 3], [1, 2], [1, 2, 3]), r"N, D and loss must have the same length; got 3, 2 and 3"),
        (([1, 2, 3], [1, np.nan, 3], [1, 2, np.inf]), r"2 point\(s\) have a missing or non-finite N, D or loss"),
        (([1, 2, 3], [1, 2, 3], [1, 0, -2]), r"^loss must be positive \(2 value\(s\) are not\)"),
    ],
)
def test_positive_columns_names_the_bad_input(columns, message):
    with pytest.raises(ValueError, match=message):
        positive_columns(("N", "D", "loss"), *columns)


def test_one_variable_and_joint_fits_share_the_input_checks():
    n, d, loss = joint_data()
    with pytest.raises(ValueError, match="^D must be positive"):
        fit_law("joint_nd", n, -d, loss)
    with pytest.raises(ValueError, match="^x must be positive"):
        fit_law("saturating", -X, np.ones_like(X))
    with pytest.raises(ValueError, match="the saturating form has 3 parameters and needs at least 3 points; got 2"):
        fit_law("saturating", X[:2], [0.5, 0.4])
    with pytest.raises(ValueError, match="the joint fit has 5 parameters and needs at least 5 points; got 4"):
        fit_law("joint_nd", n[:4], d[:4], loss[:4])
    require_points(5, 5, "joint fit")  # exactly enough is enough


# ------------------------------------------------------------ Huber, R^2, multi-start


def test_points_at_one_compute_get_no_power_law():
    """Two rungs of one IsoFLOP budget (1.999e11 and 2.000e11 FLOPs) once printed L = 0 * C^270 with
    R^2 1.000: a span within a factor 1.1 is one compute, refused by the fits and skipped by the ladder."""
    import pandas as pd

    from clipscale.scaling import fit_val_loss

    assert not spans([1.999e11, 2.0e11]) and not spans([2e11]) and spans([1e11, 2e11])
    for form in ("power", "saturating", "frontier"):
        with pytest.raises(ValueError, match="one compute"):
            fit_law(form, [1.999e11, 2.0e11, 2.05e11], [2.9, 3.0, 3.1])
    df = pd.DataFrame({"rung": ["a", "b"], "flops": [1.999e11, 2.0e11], "val/loss": [2.893, 3.030]})
    assert fit_val_loss(df) is None
    df.loc[1, "flops"] = 6e11
    assert fit_val_loss(df, holdout_k=0) is not None


def test_huber_is_quadratic_inside_linear_outside_and_smooth_at_delta():
    delta = 0.1
    r = np.array([-0.3, -0.1, 0.0, 0.05, 0.1, 0.4])
    np.testing.assert_allclose(huber(r, delta), [0.025, 0.005, 0.0, 0.00125, 0.005, 0.035])
    # The gradient is the derivative: compare with central differences away from the kink.
    for r0 in (-0.3, 0.05, 0.4):
        h = 1e-6
        numeric = (huber(np.array(r0 + h), delta) - huber(np.array(r0 - h), delta)) / (2 * h)
        assert huber_grad(np.array(r0), delta) == pytest.approx(numeric, rel=1e-6)


def test_log_r2():
    log_y = np.log([1.0, 2.0, 4.0, 8.0])
    assert log_r2(log_y, np.zeros(4)) == 1.0
    assert log_r2(log_y, log_y - log_y.mean()) == pytest.approx(0.0)  # no better than the mean
    assert np.isnan(log_r2(np.zeros(4), np.zeros(4)))  # nothing to explain


def test_best_of_keeps_the_lowest_finite_optimum():
    def double_well(v):  # minima near -1 (value 0.3) and +1 (value 0)
        x = v[0]
        return (x * x - 1) ** 2 + 0.15 * (1 - x)

    calls = []

    def minimize_from(x0):
        calls.append(float(x0[0]))
        if x0[0] > 5:  # a start whose optimum is not finite must be skipped, not kept
            return optimize.OptimizeResult(x=x0, fun=np.nan)
        return optimize.minimize(double_well, x0, method="L-BFGS-B")

    x, fun = best_of(minimize_from, [[-1.5], [9.0], [1.5]])
    assert calls == [-1.5, 9.0, 1.5]
    assert x[0] == pytest.approx(1.0, abs=0.05) and fun == pytest.approx(double_well(x))
    with pytest.raises(ValueError, match="no finite optimum from any of its 1 start"):
        best_of(minimize_from, [[9.0]])


def test_bootstrap_counts_replicates_that_cannot_be_fitted():
    assert bootstrap_samples(lambda idx: np.ones(2), 5, 0, seed=0) == (None, 0)

    def fit_once(idx):
        if idx[0] == 0:
            raise ValueError("degenerate resample")
        return None if idx[0] == 1 else np.array([float(idx.mean())])

    draws, failed = bootstrap_samples(fit_once, 5, 200, seed=0)
    assert failed > 0 and len(draws) + failed == 200
    assert draws.shape[1] == 1


# ------------------------------------------------------------ one interface for every law


@pytest.mark.parametrize("form", sorted(LAWS))
def test_every_law_answers_the_same_interface(form):
    *inputs, y = law_data(form)
    law = fit_law(form, *inputs, y)
    assert isinstance(law, ScalingLaw)
    assert list(law.params) == list(law.param_names) and set(law.ci) >= set(law.param_names)
    # Noise-free data: the fitted law passes through it.
    np.testing.assert_allclose(law.predict(*inputs), y, rtol=2e-3)
    assert law.r2 > 0.999
    assert law.to_dict()["n_points"] == len(y)


@pytest.mark.parametrize("form", ["power", "joint_nd"])
def test_bootstrap_interval_brackets_the_prediction(form):
    *inputs, y = law_data(form, noise=0.02)
    law = fit_law(form, *inputs, y, n_boot=8, seed=0)
    far = [np.array([v.max() * 10]) for v in inputs]  # beyond every rung: extrapolation
    lo, hi = law.predict_interval(*far)
    pred = law.predict(*far)
    assert lo[0] < pred[0] < hi[0]
    narrow_lo, narrow_hi = law.predict_interval(*far, level=0.5)
    assert lo[0] <= narrow_lo[0] <= narrow_hi[0] <= hi[0]
    for k in law.param_names:
        assert law.ci[k][0] <= law.params[k] <= law.ci[k][1]


def test_unknown_law_is_refused_by_name():
    with pytest.raises(ValueError, match=r"unknown form 'cubic'; expected one of .*joint_nd"):
        fit_law("cubic", X, X)


# ------------------------------------------------------------ tracking URI: one owner


def test_relative_sqlite_uri_is_resolved_like_the_ladder_does(tmp_path, monkeypatch):
    make_ladder_store(tmp_path, resumed=False)
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match="r5"):
        df = load_runs("tiny-ladder", tracking_uri="sqlite:///mlflow.db")
    assert df.attrs["tracking_uri"] == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert len(df) == 5
