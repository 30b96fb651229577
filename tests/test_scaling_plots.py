"""Figures: both formats written, runs labelled, held-out rungs marked."""

import numpy as np
import pytest

from clipscale.scaling import fit_frontier, fit_power, holdout, plot_effective_robustness, plot_fit

X = np.geomspace(1e15, 1e19, 6)
Y = 0.9 * (X / 1e15) ** -0.15 * np.exp(np.random.default_rng(0).normal(0, 0.02, 6))
LABELS = [f"rung-{i}" for i in range(6)]


def _check(paths, tmp_path, stem):
    assert [p.name for p in paths] == [f"{stem}.png", f"{stem}.svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = paths[1].read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    return svg


def test_plot_fit_with_holdout_and_band(tmp_path):
    h = holdout(X, Y, 2, n_boot=100, labels=LABELS)
    fit = fit_power(X, Y, n_boot=100)
    paths = plot_fit(fit, tmp_path / "out" / "fit", x=X, y=Y, labels=LABELS, holdout=h, x_label="FLOPs")
    svg = _check(paths, tmp_path, "fit")
    for lab in LABELS:
        assert lab in svg
    for text in ("extrapolation", "held out (actual)", "held out (predicted)", "bootstrap CI", "FLOPs"):
        assert text in svg


def test_plot_fit_without_bootstrap_or_labels(tmp_path):
    paths = plot_fit(fit_power(X, Y), tmp_path / "plain", extrapolate_to=1e21)
    svg = _check(paths, tmp_path, "plain")
    assert "bootstrap CI" not in svg and "extrapolation" in svg


def test_plot_frontier_marks_frontier(tmp_path):
    x = np.concatenate([X, X[1:] * 1.01])
    y = np.concatenate([Y, Y[:-1] * 1.3])
    paths = plot_fit(fit_frontier(x, y), tmp_path / "front", x=x, y=y)
    assert "frontier" in _check(paths, tmp_path, "front")


def test_effective_robustness_plot(tmp_path):
    id_acc = np.array([0.3, 0.45, 0.6, 0.72])
    paths = plot_effective_robustness(id_acc, id_acc * 0.7, tmp_path / "er", labels=["a", "b", "c", "d"], task="shapes")
    svg = _check(paths, tmp_path, "er")
    assert "logit-linear trend" in svg and "top-1 under shift (shapes)" in svg
    with pytest.raises(ValueError, match="match in length"):
        plot_effective_robustness([0.1, 0.2], [0.1], tmp_path / "bad")
