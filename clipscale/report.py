"""What a ladder shows people: the live scaling fit on the parent run, and the final table.

`refresh_scaling` runs after every finished rung. It reads the parent's
children from MLflow (failed rungs are left out, and named), fits zero-shot
error against compute with bootstrap CIs, predicts the largest rung from the
smaller ones, and logs both the numbers (`scaling/<task>/...`, stepped by the
number of rungs fitted, so the UI shows the law taking shape) and the plots.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

X_LABELS = {"flops": "training compute (FLOPs)", "device_days": "device-days"}


def refresh_scaling(tracker, parent_id: str, task: str, x: str = "flops", holdout_k: int = 1,
                    bootstrap: int = 200) -> dict:
    import warnings

    from clipscale import scaling

    with warnings.catch_warnings():  # mid-ladder, unfinished rungs are expected; they are named below
        warnings.simplefilter("ignore", UserWarning)
        df = scaling.load_runs(parent_run_id=parent_id, tracking_uri=tracker.uri)
    excluded = [e["rung"] for e in df.attrs.get("excluded", [])]
    col = f"zeroshot/{task}/error"
    if col not in df.columns and len(df):
        task = scaling.default_task(df)
        col = f"zeroshot/{task}/error"
    out: dict = {"task": task, "x": x, "n_points": int(len(df)), "excluded": excluded}
    if len(df) < 2 or col not in df.columns:
        out["summary"] = f"scaling fit waits for 2 finished rungs ({len(df)} so far)"
        return out
    xs, ys, labels = df[x].to_numpy(float), df[col].to_numpy(float), df["rung"].astype(str).to_numpy()
    fit = scaling.fit_power(xs, ys, n_boot=bootstrap, seed=0)
    step = len(df)
    prefix = f"scaling/{task}"
    metrics = {f"{prefix}/a": fit.params["a"], f"{prefix}/b": fit.params["b"], f"{prefix}/r2": fit.r2,
               f"{prefix}/n_points": len(df)}
    for name, (lo, hi) in fit.ci.items():
        metrics[f"{prefix}/{name}_ci_lo"], metrics[f"{prefix}/{name}_ci_hi"] = lo, hi
    out.update(a=fit.params["a"], b=fit.params["b"], r2=fit.r2, ci={k: list(v) for k, v in fit.ci.items()})

    held = None
    if holdout_k and len(df) - holdout_k >= 2:
        held = scaling.holdout(xs, ys, holdout_k, labels=labels, n_boot=bootstrap, seed=0)
        worst = max(held.points, key=lambda p: p.rel_error)
        metrics[f"{prefix}/holdout_rel_error"] = worst.rel_error
        metrics[f"{prefix}/holdout_abs_error"] = worst.abs_error
        out["holdout"] = [{"rung": p.label, "predicted": p.predicted, "actual": p.actual,
                           "rel_error": p.rel_error} for p in held.points]
    tracker.log_metrics(parent_id, metrics, step=step)
    tracker.set_tags(parent_id, {"clipscale.scaling.excluded": ",".join(excluded) or "none"})

    with tempfile.TemporaryDirectory() as tmp:
        scaling.plot_fit(fit, Path(tmp, f"{task}_vs_{x}"), x=xs, y=ys, labels=labels, holdout=held,
                         x_label=X_LABELS.get(x, x), y_label=f"zero-shot error ({task})",
                         title=f"{len(df)} rungs" + (f"; left out: {', '.join(excluded)}" if excluded else ""))
        for shift_col in [c for c in df.columns if c.startswith("zeroshot/") and c.endswith("-shift/top1")]:
            base = shift_col.replace("-shift/top1", "/top1")
            if base in df.columns:
                name = shift_col.split("/")[1].removesuffix("-shift")
                scaling.plot_effective_robustness(df[base].to_numpy(float), df[shift_col].to_numpy(float),
                                                  Path(tmp, f"robustness_{name}"), labels=labels, task=name)
        tracker.client.log_artifacts(parent_id, tmp, "scaling")

    out["summary"] = summary_line(out)
    return out


def summary_line(fit: dict) -> str:
    ci = fit.get("ci", {})
    b_ci = ci.get("b")
    parts = [f"scaling ({fit['task']} error vs {fit['x']}, {fit['n_points']} rungs): "
             f"error = {fit['a']:.3g} * C^-{fit['b']:.4f}" + (f" (b 95% CI {b_ci[0]:.4f}..{b_ci[1]:.4f})" if b_ci else "")
             + f", R^2 {fit['r2']:.3f} in log space"]
    for p in fit.get("holdout", []):
        parts.append(f"held out {p['rung']}: predicted {p['predicted']:.3f}, actual {p['actual']:.3f} "
                     f"({p['rel_error']:.1%} off)")
    if fit.get("excluded"):
        parts.append(f"left out (not finished): {', '.join(fit['excluded'])}")
    return "\n".join(parts)


def summary_rows(tracker, plans: list, runs: dict) -> list[dict]:
    rows = []
    for p in plans:
        run = tracker.client.get_run(runs[p.rung.name])
        m = run.data.metrics
        row = {"rung": p.rung.name, "status": run.info.status, "nonembedding_params": p.nonembedding_params,
               "flops": m.get("compute/flops", float("nan")), "device_days": m.get("compute/device_days", float("nan"))}
        row.update({k.split("/")[1]: v for k, v in sorted(m.items())
                    if k.startswith("zeroshot/") and k.endswith("/error")})
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    if not rows:
        return "(no rungs)"
    cols = list(dict.fromkeys(k for r in rows for k in r))

    def cell(v):
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        if isinstance(v, float):
            return "nan" if math.isnan(v) else (f"{v:.3e}" if abs(v) >= 1e4 or (v and abs(v) < 1e-3) else f"{v:.3f}")
        return str(v)

    table = [cols] + [[cell(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in table)
