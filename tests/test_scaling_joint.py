"""Joint L(N, D) fit: the published Chinchilla result, synthetic recovery, the optimum."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import optimize

from clipscale.scaling import fit_joint, fit_joint_baseline, hoffmann_grid, joint_objective
from clipscale.scaling.joint import fit_joint_theta

# Epoch AI's extraction of the Chinchilla runs, kept in the repository (tests/data/README.md).
CHINCHILLA = Path(__file__).resolve().parent / "data" / "chinchilla_epoch_points.csv"

# Hoffmann et al. (2022)'s Approach 3 method applied to the points Epoch AI extracted
# from their Figure 4, and Epoch's own fit (Besiroglu et al. 2024, "Chinchilla Scaling:
# A replication attempt"), both on the 240 points left after dropping the 5 highest losses.
HOFFMANN_METHOD = {"E": 1.817, "A": 477.8, "B": 2143.0, "alpha": 0.3473, "beta": 0.3672}
EPOCH_FIT = {"E": 1.817, "A": 482.0, "B": 2085.4, "alpha": 0.3478, "beta": 0.3658}


@pytest.fixture(scope="module")
def chinchilla():
    df = pd.read_csv(CHINCHILLA)
    assert len(df) == 245
    df = df.sort_values("loss", kind="stable").iloc[:-5]  # drop the 5 highest losses, as Epoch did
    return df.N_params.to_numpy(), df.D_tokens.to_numpy(), df.loss.to_numpy()


@pytest.fixture(scope="module")
def chinchilla_fit(chinchilla):
    return fit_joint(*chinchilla)


def test_chinchilla_recovers_published_fit(chinchilla_fit):
    p = chinchilla_fit.params
    ref = HOFFMANN_METHOD
    assert p["E"] == pytest.approx(ref["E"], rel=0.01)
    assert p["alpha"] == pytest.approx(ref["alpha"], rel=0.02)
    assert p["beta"] == pytest.approx(ref["beta"], rel=0.02)
    assert p["A"] == pytest.approx(ref["A"], rel=0.10)
    assert p["B"] == pytest.approx(ref["B"], rel=0.10)
    # Epoch's fit is a hair off the same optimum; the looser reference still holds.
    for k in ("E", "alpha", "beta"):
        assert p[k] == pytest.approx(EPOCH_FIT[k], rel=0.02)
    assert chinchilla_fit.n_points == 240
    assert chinchilla_fit.r2 > 0.9


def test_chinchilla_optimum_is_no_worse_than_the_references(chinchilla, chinchilla_fit):
    for ref in (HOFFMANN_METHOD, EPOCH_FIT):
        assert chinchilla_fit.loss <= joint_objective(ref, *chinchilla) + 1e-12
    assert chinchilla_fit.loss == pytest.approx(joint_objective(chinchilla_fit.params, *chinchilla), rel=1e-9)


def test_fast_fit_matches_the_straightforward_loop(chinchilla, chinchilla_fit):
    """On a random slice of the grid the reference loop finds nothing better."""
    rng = np.random.default_rng(0)
    starts = hoffmann_grid()[rng.choice(4500, 25, replace=False)]
    _, base_fun = fit_joint_baseline(*chinchilla, starts=starts)
    assert chinchilla_fit.loss <= base_fun + 1e-12
    # ... and the fast path given the same slice does as well as the loop on it.
    _, fast_fun = fit_joint_theta(*chinchilla, starts=starts)
    assert fast_fun <= base_fun + 1e-10


def test_hoffmann_grid_is_the_documented_4500_starts():
    g = hoffmann_grid()
    assert g.shape == (4500, 5)
    assert sorted(set(g[:, 3])) == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert sorted(set(g[:, 1])) == [0.0, 5.0, 10.0, 15.0, 20.0, 25.0]
    assert sorted(set(g[:, 0])) == [-1.0, -0.5, 0.0, 0.5, 1.0]


def test_compute_optimal_matches_brute_force(chinchilla_fit):
    fit = chinchilla_fit
    p = fit.params
    for c in (1e20, 5.76e23):
        # Minimise L over N along the iso-FLOP line D = C / (6 N), independently of eq. 4.
        res = optimize.minimize_scalar(
            lambda ln: fit.predict(np.exp(ln), c / (6 * np.exp(ln))), bounds=(np.log(1e6), np.log(1e14)),
            method="bounded", options={"xatol": 1e-10},
        )
        n_opt, d_opt = fit.compute_optimal(c)
        assert n_opt == pytest.approx(np.exp(res.x), rel=1e-4)
        assert 6 * n_opt * d_opt == pytest.approx(c, rel=1e-9)
        assert fit.optimal_loss(c) == pytest.approx(res.fun, rel=1e-9)
    assert fit.a_exp == pytest.approx(p["beta"] / (p["alpha"] + p["beta"]))
    assert fit.a_exp + fit.b_exp == pytest.approx(1.0)
    # Chinchilla's headline: parameters and data grow about equally with compute.
    assert 0.45 < fit.a_exp < 0.55


def test_flops_per_nd_is_a_parameter(chinchilla):
    n, d, l = (v[:60] for v in chinchilla)
    six, two = fit_joint(n, d, l), fit_joint(n, d, l, flops_per_nd=2.0)
    c = 1e22
    # Same fit; at k = 2 the budget buys 3x the N*D, split by the same exponents.
    assert two.params == six.params
    ratio = two.compute_optimal(c)[0] / six.compute_optimal(c)[0]
    assert ratio == pytest.approx(3.0**six.a_exp, rel=1e-9)


TRUE = {"E": 1.7, "A": 400.0, "B": 1500.0, "alpha": 0.34, "beta": 0.30}


def synthetic(seed, n_points=80, sd=0.01):
    rng = np.random.default_rng(seed)
    n = np.exp(rng.uniform(np.log(1e7), np.log(1e10), n_points))
    d = np.exp(rng.uniform(np.log(1e9), np.log(1e12), n_points))
    l_true = TRUE["E"] + TRUE["A"] / n ** TRUE["alpha"] + TRUE["B"] / d ** TRUE["beta"]
    return n, d, l_true * np.exp(rng.normal(0.0, sd, n_points))


def test_synthetic_recovery_and_bootstrap_coverage():
    """Known parameters fall inside the 90% bootstrap intervals at about the nominal rate."""
    seeds, hits, total, widths = 10, 0, 0, []
    for s in range(seeds):
        fit = fit_joint(*synthetic(100 + s), n_boot=40, seed=s, level=0.9, boot_starts=0)
        assert fit.n_boot_failed == 0
        for k, v in TRUE.items():
            lo, hi = fit.ci[k]
            hits += lo <= v <= hi
            total += 1
        widths.append(fit.ci["alpha"][1] - fit.ci["alpha"][0])
        assert fit.params["E"] == pytest.approx(TRUE["E"], rel=0.05)
    rate = hits / total
    # 50 intervals, correlated within a fit; 40 replicates make the tails noisy.
    assert rate >= 0.7, rate
    # The intervals are informative, not trivially wide.
    assert np.median(widths) < 0.15


def test_bootstrap_gives_intervals_for_the_allocation():
    fit = fit_joint(*synthetic(1), n_boot=20, seed=0, boot_starts=0)
    iv = fit.compute_optimal_interval([1e21, 1e23])
    n_opt, _ = fit.compute_optimal([1e21, 1e23])
    lo, hi = iv["N_opt"]
    assert np.all(lo <= n_opt * 1.0000001) and np.all(n_opt <= hi * 1.0000001)
    lo, hi = fit.predict_interval([1e8, 1e9], [1e10, 1e11])
    assert np.all(lo < fit.predict([1e8, 1e9], [1e10, 1e11])) and np.all(fit.predict([1e8, 1e9], [1e10, 1e11]) < hi)
    d = fit.to_dict()
    assert set(d["ci"]) >= {"E", "A", "B", "alpha", "beta", "a_exp", "b_exp"}
    assert d["n_boot"] == 20


def test_joint_fit_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 5"):
        fit_joint([1e8, 1e9], [1e10, 1e11], [3.0, 2.5])
    with pytest.raises(ValueError, match="positive"):
        fit_joint([1e8] * 6, [1e10] * 6, [3.0, 2.5, 2.4, 2.3, 0.0, 2.1])


def test_a_replicate_past_float_range_is_a_failed_replicate_without_a_warning():
    import warnings

    from clipscale.scaling.bootstrap import bootstrap_samples
    from clipscale.scaling.joint import boot_params

    diverged = np.array([0.0, 800.0, 0.0, 0.3, 0.3])  # log A = 800: A is past float range
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        params = boot_params(diverged)
        assert np.isinf(params[1]) and params[0] == 1.0
        boot, failed = bootstrap_samples(lambda idx: boot_params(diverged if idx[0] % 2 else np.zeros(5)),
                                         6, 40, seed=0)
    assert failed > 0 and len(boot) == 40 - failed and np.isfinite(boot).all()
