"""Figures for a ladder: a target against compute with the fit, every rung's learning
curve with their compute-efficient frontier, and effective robustness.

Every function saves PNG and SVG next to each other and returns their paths, so the
ladder can log them to MLflow as artifacts.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: ladders and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from clipscale.scaling.results import HoldoutResult, PowerFit  # noqa: E402


def _save(fig, out_prefix) -> list[Path]:
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    paths = [out_prefix.with_name(out_prefix.name + ext) for ext in (".png", ".svg")]
    # Text stays text in the SVG (not outlines): smaller, and rung labels stay searchable.
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        for p in paths:
            fig.savefig(p, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return paths


def _label_points(ax, xs, ys, labels):
    if labels is None:
        return
    for x, y, lab in zip(xs, ys, labels):
        ax.annotate(str(lab), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)


def _curve_label(fit: PowerFit) -> str:
    p = fit.params
    s = f"{fit.form}: {p['a']:.3g} C^-{p['b']:.3f}"
    if "E_inf" in p:
        s = f"{fit.form}: {p['E_inf']:.3g} + {p['a']:.3g} C^-{p['b']:.3f}"
    return s + f"  (R² log {fit.r2:.3f})"


def plot_fit(
    fit: PowerFit,
    out_prefix,
    *,
    x=None,
    y=None,
    labels=None,
    holdout: HoldoutResult | None = None,
    extrapolate_to: float | None = None,
    x_label: str = "compute",
    y_label: str = "zero-shot error",
    title: str | None = None,
    yerr=None,
    left_out=None,
    references=None,
) -> list[Path]:
    """A target against compute on log-log axes, the fitted curve and its bootstrap band.

    x, y, labels are all the runs to draw (default: the points the fit used), labelled by
    rung; yerr (seed sd per point, NaN for one seed) draws error bars. left_out is
    (x, y, labels) of rungs shown but not fitted (near chance), drawn hollow; references are
    outside models ({model, x, actual} dicts, as `references_against` gives them) at their stated
    compute, drawn as diamonds. With a
    hold-out result, its fit is drawn instead and each held-out truth is marked against the
    prediction with its prediction interval, saying whether it fell inside. The curve is
    solid over the fitted range and dashed beyond it, up to the largest held-out x or
    extrapolate_to. Returns [png, svg].
    """
    shown = holdout.fit if holdout is not None else fit
    xs = shown.x if x is None else np.asarray(x, dtype=float)
    ys = shown.y if y is None else np.asarray(y, dtype=float)
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    held = {p.x for p in holdout.points} if holdout is not None else set()
    in_fit = np.array([xv not in held for xv in xs])
    ax.scatter(xs[in_fit], ys[in_fit], color="C0", zorder=3, label="rungs (mean over seeds)" if yerr is not None else "runs")
    _error_bars(ax, xs, ys, yerr)
    _unfitted(ax, left_out, "near chance (not fitted)", facecolors="none", edgecolors="grey")
    ref_points = [[r[k] for r in references] for k in ("x", "actual", "model")] if references else None
    _unfitted(ax, ref_points, "reference models (not fitted)", marker="D", color="C4")
    if shown.frontier_mask is not None:
        ax.scatter(shown.x[shown.frontier_mask], shown.y[shown.frontier_mask], facecolors="none",
                   edgecolors="C3", s=90, zorder=4, label="frontier")
    _label_points(ax, xs, ys, labels)

    x_end = max([float(shown.fitted_x.max()), *(p.x for p in holdout.points)] if holdout else [shown.fitted_x.max()])
    if extrapolate_to is not None:
        x_end = max(x_end, float(extrapolate_to))
    _draw_curve(ax, shown, x_end)

    if holdout is not None:
        hx = np.array([p.x for p in holdout.points])
        _prediction_intervals(ax, holdout)
        ax.scatter(hx, [p.actual for p in holdout.points], marker="*", s=140, color="C2", zorder=5, label="held out (actual)")
        ax.scatter(hx, [p.predicted for p in holdout.points], marker="x", s=70, color="C3", zorder=5, label="held out (predicted)")
        for p in holdout.points:
            ax.plot([p.x, p.x], [p.actual, p.predicted], color="C3", linewidth=0.8)
            ax.annotate(f"{p.rel_error:+.1%}".replace("+", ""), (p.x, p.predicted), textcoords="offset points",
                        xytext=(6, -10), fontsize=7, color="C3")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    if title:
        ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, out_prefix)


def _draw_curve(ax, shown: PowerFit, x_end: float) -> None:
    """The law: solid over the fitted range, dashed up to x_end, and its bootstrap band."""
    x_lo, x_hi = float(shown.fitted_x.min()), float(shown.fitted_x.max())
    grid_in = np.geomspace(x_lo, x_hi, 200)
    ax.plot(grid_in, shown.predict(grid_in), color="C1", label=_curve_label(shown))
    grid_out = np.geomspace(x_hi, x_end, 100) if x_end > x_hi else None
    if grid_out is not None:
        ax.plot(grid_out, shown.predict(grid_out), color="C1", linestyle="--", label="extrapolation")
    if shown.boot_params is not None:
        full = np.concatenate([grid_in, grid_out]) if grid_out is not None else grid_in
        lo, hi = shown.predict_interval(full)
        ax.fill_between(full, lo, hi, color="C1", alpha=0.2, linewidth=0, label=f"{shown.level:.0%} bootstrap CI")


def _error_bars(ax, xs, ys, yerr) -> None:
    if yerr is None:
        return
    yerr = np.asarray(yerr, dtype=float)
    ok = np.isfinite(yerr)
    if ok.any():
        ax.errorbar(xs[ok], ys[ok], yerr=yerr[ok], fmt="none", ecolor="C0", elinewidth=1, capsize=3, zorder=2,
                    label="seed sd")


def _unfitted(ax, points, label: str, **style) -> None:
    """(x, y, labels) drawn and named but not part of the fit: near-chance rungs, reference models."""
    if points is None or len(points[0]) == 0:
        return
    px, py, plab = points
    ax.scatter(px, py, zorder=3, label=label, **style)
    _label_points(ax, px, py, plab)


def _prediction_intervals(ax, holdout: HoldoutResult) -> None:
    """Each held-out point's prediction interval as a bar, green when the truth fell inside."""
    for i, p in enumerate(holdout.points):
        if not np.isfinite([p.pi_lo, p.pi_hi]).all():
            continue
        color = "C2" if p.covered else "C3"
        where = "inside" if p.covered else "outside"
        ax.errorbar([p.x], [p.predicted], yerr=[[p.predicted - p.pi_lo], [p.pi_hi - p.predicted]], fmt="none",
                    ecolor=color, elinewidth=2, capsize=5, zorder=4,
                    label=f"95% prediction interval (actual {where})" if i == 0 else None)


def plot_loss_curves(histories, out_prefix, *, x: str = "train/flops", y: str = "val/loss",
                     frontier=None, title: str | None = None) -> list[Path]:
    """Every run's learning curve (y against x, one colour per rung, one line per seed) and
    the compute-efficient frontier over all their points with its power-law fit: the
    envelope picture of Kaplan et al. 2020 (Fig. 2) and Cherti et al. 2023.

    histories is load_histories' long frame; frontier a fit_frontier result over its points
    (None: no frontier drawn). Returns [png, svg].
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    h = histories.dropna(subset=[x, y])
    h = h[(h[x] > 0) & (h[y] > 0)]
    rungs = list(dict.fromkeys(h.sort_values(x)["rung"]))
    for i, rung in enumerate(rungs):
        for j, (_, run) in enumerate(h[h["rung"] == rung].groupby("run_id", sort=False)):
            run = run.sort_values(x)
            ax.plot(run[x], run[y], color=f"C{i % 10}", alpha=0.8, linewidth=1, label=str(rung) if j == 0 else None)
    if frontier is not None:
        fx, fy = frontier.x[frontier.frontier_mask], frontier.y[frontier.frontier_mask]
        order = np.argsort(fx, kind="stable")
        ax.plot(fx[order], fy[order], color="black", linewidth=1.5, zorder=4, marker="o", markersize=3,
                label="compute-efficient frontier (envelope)")
        grid = np.geomspace(fx.min(), fx.max(), 100)
        ax.plot(grid, frontier.predict(grid), color="black", linestyle="--",
                label=f"frontier fit {frontier.params['a']:.3g} C^-{frontier.params['b']:.3f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"{x} (training compute, FLOPs)" if x == "train/flops" else x)
    ax.set_ylabel(y)
    if title:
        ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, out_prefix)


def _logit(p):
    p = np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def plot_effective_robustness(
    id_acc, shift_acc, out_prefix, *, labels=None, task: str | None = None
) -> list[Path]:
    """Accuracy under shift against in-distribution accuracy across rungs.

    Effective robustness (Taori et al. 2020) is the distance above the trend of these
    points; the trend is a line in logit space, drawn when there are at least 2 rungs.
    Returns [png, svg].
    """
    x, y = np.asarray(id_acc, dtype=float), np.asarray(shift_acc, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"id and shift accuracies must match in length; got {len(x)} and {len(y)}")
    fig, ax = plt.subplots(figsize=(5.2, 4.8))
    ax.scatter(x, y, color="C0", zorder=3, label="rungs")
    _label_points(ax, x, y, labels)
    lim = (0.0, 1.0)
    ax.plot(lim, lim, color="grey", linestyle=":", label="y = x (no drop under shift)")
    if len(np.unique(x)) >= 2:
        slope, icpt = np.polyfit(_logit(x), _logit(y), 1)
        gx = np.linspace(max(x.min() * 0.8, 1e-3), min(1 - 1e-3, x.max() + (1 - x.max()) * 0.3), 100)
        ax.plot(gx, 1 / (1 + np.exp(-(slope * _logit(gx) + icpt))), color="C1", label="logit-linear trend")
    ax.set_xlim(*lim)
    ax.set_ylim(*lim)
    name = f" ({task})" if task else ""
    ax.set_xlabel(f"in-distribution top-1{name}")
    ax.set_ylabel(f"top-1 under shift{name}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, out_prefix)


def plot_comparison(comparison, out_prefix, *, x_label: str = "compute", y_label: str = "zero-shot error") -> list[Path]:
    """Two ladders' points and laws (each with its bootstrap band) on one log-log plot, with the
    compute multiplier drawn at ladder B's largest compute. Returns [png, svg]."""
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    c = comparison
    xs = np.concatenate([f.fitted_x for f in c.fits])
    grid = np.geomspace(xs.min() / 2, max(xs.max(), c.at_compute * min(c.multiplier, 100.0)) * 2, 300)
    for i, (name, fit) in enumerate(zip(c.names, c.fits)):
        color = f"C{i}"
        ax.scatter(fit.x, fit.y, color=color, zorder=3, label=f"{name}: {fit.n_points} rungs")
        ax.plot(grid, fit.predict(grid), color=color, label=_curve_label(fit))
        if fit.boot_params is not None:
            lo, hi = fit.predict_interval(grid)
            ax.fill_between(grid, lo, hi, color=color, alpha=0.15, linewidth=0)
    needed = c.at_compute * c.multiplier
    ax.axhline(c.target, color="gray", linewidth=0.8, linestyle=":")
    ax.axvline(c.at_compute, color="C1", linewidth=0.8, linestyle=":")
    if np.isfinite(needed):
        ax.axvline(needed, color="C0", linewidth=0.8, linestyle=":")
    lo, hi = c.multiplier_ci
    ax.set_title(f"{c.names[0]} needs {c.multiplier:.3g}x the compute of {c.names[1]} "
                 f"({c.level:.0%} CI {lo:.3g}-{hi:.3g})", fontsize=9)
    for x in c.crossovers:
        ax.axvline(x, color="C3", linewidth=1, linestyle="--", label=f"laws cross at {x:.3g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.legend(fontsize=7)
    return _save(fig, out_prefix)


def plot_isoflop(two, three, out_prefix, *, y_label: str = "loss", profiles=None, compute=None) -> list[Path]:
    """Left: each budget's loss against N with its parabola and minimum (Approach 2). Right: N_opt
    against compute, the budgets' minima with Approach 2's line and Approach 3's. `two` is None
    where Approach 2 found no minima: then `profiles` (per budget (N, loss)) are drawn, and only
    Approach 3's line over the points' `compute`. Returns [png, svg]."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    for i, (n, loss, budget) in enumerate(two.profiles if two is not None else profiles):
        color = f"C{i % 10}"
        left.scatter(n, loss, color=color, s=14, label=f"C = {budget:.2g} FLOPs")
        if len(np.unique(n)) >= 3:
            x = np.log(n)
            grid = np.linspace(x.min(), x.max(), 100)
            left.plot(np.exp(grid), np.polyval(np.polyfit(x, loss, 2), grid), color=color, linewidth=1)
    left.set_xscale("log")
    # Profiles and budgets span about a decade: minor-tick labels would overprint each other.
    left.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    left.legend(fontsize=7)
    left.set_xlabel("N (non-embedding parameters)")
    left.set_ylabel(y_label)
    left.set_title("IsoFLOP profiles" + ("" if two is not None else " (no minima inside the sizes)"), fontsize=9)
    compute = np.asarray(compute if two is None else two.compute, dtype=float)
    grid = np.geomspace(compute.min() / 2, compute.max() * 2, 100)
    if two is not None:
        for n_opt in two.n_opt:
            left.axvline(n_opt, color="gray", linewidth=0.5, linestyle=":")
        right.scatter(two.compute, two.n_opt, color="C0", zorder=3, label="budget minima")
        g2 = np.exp(np.mean(np.log(two.n_opt) - two.a * np.log(two.compute)))
        right.plot(grid, g2 * grid**two.a, color="C0", label=f"Approach 2: N_opt ~ C^{two.a:.3f}")
    right.plot(grid, three.compute_optimal(grid)[0], color="C1", linestyle="--",
               label=f"Approach 3: N_opt ~ C^{three.a_exp:.3f}")
    right.set_xscale("log")
    right.set_yscale("log")
    right.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    right.set_xlabel("compute (FLOPs)")
    right.set_ylabel("N_opt")
    right.legend(fontsize=7)
    return _save(fig, out_prefix)


def plot_lr_sweep(labels, n, lr, loss, stopped, fit, out_prefix) -> list[Path]:
    """A learning-rate sweep, one row per trial (size label, N, LR, final loss, stopped early).
    Left: final validation loss against LR per size; trials an early-stopping scheduler ended are
    hollow (their loss is from fewer samples), each size's chosen optimum is a star on its best
    trial's loss. Right: the optima against N with lr_opt = c N^-gamma and its band. Returns [png, svg]."""
    labels, n, lr, loss, stopped = (np.asarray(v) for v in (labels, n, lr, loss, stopped))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    optimum = {o.n: o for o in fit.optima}
    for i, size in enumerate(np.unique(n.astype(float))):
        m, color = (n == size) & np.isfinite(loss.astype(float)), f"C{i % 10}"
        order = np.argsort(lr[m].astype(float))
        x, y, early = lr[m].astype(float)[order], loss[m].astype(float)[order], stopped[m].astype(bool)[order]
        left.plot(x, y, color=color, linewidth=0.8, alpha=0.6)
        left.scatter(x[~early], y[~early], color=color, s=18, label=f"{labels[n == size][0]} (N={size:.3g})")
        left.scatter(x[early], y[early], facecolors="none", edgecolors=color, s=18)
        if size in optimum:
            o = optimum[size]
            left.scatter([o.lr_opt], [o.best_loss], marker="*", s=120, color=color, edgecolors="black", zorder=4)
    left.set_xscale("log")
    for ax in (left, right):  # a sweep spans about a decade: minor-tick labels would overprint each other
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    left.set_xlabel("learning rate")
    left.set_ylabel("final val/loss")
    left.set_title("loss against LR (hollow: stopped early; star: chosen optimum)", fontsize=9)
    left.legend(fontsize=7)
    sizes = np.array([o.n for o in fit.optima])
    grid = np.geomspace(sizes.min() / 1.5, sizes.max() * 1.5, 100)
    band = fit.band(grid)
    if band is not None:
        right.fill_between(grid, band[0], band[1], color="C0", alpha=0.15, linewidth=0,
                           label=f"{fit.level:.0%} bootstrap band")
    right.plot(grid, fit.predict(grid), color="C0", label=f"lr_opt = {fit.c:.3g} N^{-fit.gamma:.3f}")
    right.scatter(sizes, [o.lr_opt for o in fit.optima], color="C0", zorder=3, label="per-size optimum")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("N (non-embedding parameters)")
    right.set_ylabel("optimal learning rate")
    right.legend(fontsize=7)
    return _save(fig, out_prefix)
