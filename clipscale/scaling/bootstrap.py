"""Seeded bootstrap over runs and percentile intervals."""

from __future__ import annotations

from typing import Callable

import numpy as np

from clipscale.scaling.threads import single_thread_blas


def bootstrap_samples(
    fit_once: Callable[[np.ndarray], np.ndarray | None],
    n_points: int,
    n_boot: int,
    seed: int,
    strata: list[np.ndarray] | None = None,
) -> tuple[np.ndarray | None, int]:
    """Refit on n_boot resamples (with replacement) of the runs; with strata (index arrays that
    partition the runs), each stratum is resampled on its own, keeping its size.

    fit_once takes the resampled indices and returns a parameter vector, or None when the
    resample cannot be fitted (e.g. every draw hit the same compute). Returns the
    (n_ok, n_params) samples (None if none succeeded, or n_boot is 0) and how many
    replicates failed. The same seed gives the same resamples, so intervals are reproducible.
    """
    if n_boot <= 0:
        return None, 0  # and no thread-pool juggling for nothing
    rng = np.random.default_rng(seed)
    samples, failed = [], 0
    with single_thread_blas():
        for _ in range(n_boot):
            idx = (rng.integers(0, n_points, size=n_points) if strata is None
                   else np.concatenate([rng.choice(g, size=len(g), replace=True) for g in strata]))
            p = _fit_or_none(fit_once, idx)
            if p is None:
                failed += 1
                continue
            samples.append(p)
    if not samples:
        return None, failed
    return np.vstack(samples), failed


def _fit_or_none(fit_once, idx) -> np.ndarray | None:
    # A replicate that cannot be fitted is counted as failed, not allowed to end the fit.
    try:
        p = fit_once(idx)
    except (ValueError, FloatingPointError, np.linalg.LinAlgError):
        return None
    return None if p is None or not np.all(np.isfinite(p)) else np.asarray(p, dtype=float)


def percentile_ci(samples: np.ndarray | None, names, level: float) -> dict[str, tuple[float, float]]:
    """Equal-tailed percentile interval per named column of samples."""
    if samples is None or len(samples) == 0:
        return {k: (float("nan"), float("nan")) for k in names}
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(samples, [tail, 100.0 - tail], axis=0)
    return {k: (float(lo[i]), float(hi[i])) for i, k in enumerate(names)}


def percentile_band(draws: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise interval over the first axis of draws (n_draws, n_x)."""
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(draws, [tail, 100.0 - tail], axis=0)
    return lo, hi
