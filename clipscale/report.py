"""What a ladder shows people: the live scaling fit on the parent run, and the final table.

`refresh_scaling` runs after every finished rung. It reads the parent's children from
MLflow, grouped by rung over replicate seeds (failed rungs are left out, and named), and
fits (clipscale.scaling.analysis):

- the validation-loss law (saturating or power, by loss_law.RULE), weighted by the seeds'
  standard errors, with the largest rung predicted from the smaller ones inside a 95%
  prediction interval: `scaling/val_loss/...`;
- the zero-shot error of `scaling.task` against compute over the rungs that beat chance,
  with the same check: `scaling/<task>/...` (names as before), the near-chance rungs named
  in the tag `clipscale.scaling.near_chance.<task>`;
- the held-out rung's error predicted in two steps, compute -> loss -> error (OLMo's
  ladder): `scaling/<task>/twostep_*`.

Metrics are stepped by the number of rungs fitted, so the UI shows the law taking shape.
`scaling.target` chooses which law heads the result and the summary; both are logged.
Plots: `<task>_vs_<x>` and `val_loss_vs_<x>` (error bars = seed sd, the held-out point and
its interval), `val_loss_curves` (every rung's learning curve and their frontier).
"""

from __future__ import annotations

import math
import tempfile
import warnings
from pathlib import Path

from clipscale.names import zeroshot

X_LABELS = {"flops": "training compute (FLOPs)", "device_days": "device-days"}
VAL_LOSS = "val_loss"


def refresh_scaling(tracker, parent_id: str, task: str, x: str = "flops", holdout_k: int = 1,
                    bootstrap: int = 200, *, target: str = VAL_LOSS, n_eval: int | None = None,
                    error_floor: float | None = 0.0) -> dict:
    """Fit, log and plot the ladder's laws on the parent run; returns the result with a
    `summary` text. target is `val_loss` or `zeroshot` (scaling.target); n_eval is the eval
    set size per task (eval.n_per_task), for the near-chance test; error_floor is the two-step
    sigmoid's floor (scaling.error_floor, None fits it)."""
    from clipscale import scaling

    with warnings.catch_warnings():  # mid-ladder, unfinished rungs are expected; they are named below
        warnings.simplefilter("ignore", UserWarning)
        df = scaling.load_runs(parent_run_id=parent_id, tracking_uri=tracker.uri)
    excluded = [e["rung"] for e in df.attrs.get("excluded", [])]
    if zeroshot(task, "error") not in df.columns and scaling.tasks(df):
        task = scaling.default_task(df)
    target = str(getattr(target, "value", target))
    out: dict = {"target": target, "task": task, "x": x, "n_points": int(len(df)), "excluded": excluded}
    if len(df) < 2:
        out["summary"] = f"scaling fit waits for 2 finished rungs ({len(df)} so far)"
        return out
    histories = _histories(scaling, df, tracker.uri, task)
    loss = _quiet(scaling.fit_val_loss, df, x, holdout_k, bootstrap)
    err = _quiet(scaling.fit_task_error, df, task, x, holdout_k, bootstrap, n_eval)
    two = scaling.two_step(df, loss, task, histories, floor_error=error_floor) if loss is not None else None
    chance = _chance(scaling, df, task, n_eval)
    metrics = {**target_metrics(loss), **target_metrics(err), **twostep_metrics(task, two)}
    metrics[f"scaling/{task}/n_near_chance"] = len(chance)
    tracker.log_metrics(parent_id, metrics, step=len(df))
    tracker.set_tags(parent_id, _tags(target, task, excluded, chance, loss))
    refs = scaling.references_against(df, x, err.column, err.law) if err is not None else []
    with tempfile.TemporaryDirectory() as tmp:
        _plots(scaling, Path(tmp), df, x, task, loss, err, histories, excluded, refs)
        tracker.log_artifacts(parent_id, tmp, "scaling")
    out.update(_result(target, task, loss, err, two, chance))
    out["references"] = refs
    out["summary"] = summary_line(out)
    return out


def _quiet(fn, *args):
    """fn(*args), or None when the fit cannot be computed (too few usable rungs, no optimum)."""
    try:
        return fn(*args)
    except ValueError:
        return None


def _histories(scaling, df, uri, task):
    if "val/loss" not in df.columns:
        return None
    return scaling.load_histories(df, ["val/loss", "train/flops", f"val/zeroshot/{task}/top1"], uri)


def _chance(scaling, df, task, n_eval) -> list[str]:
    col = zeroshot(task, "error")
    if col not in df.columns:
        return []
    return scaling.near_chance(df[df[col].notna()], task, n_eval).rungs


def _tags(target, task, excluded, chance, loss) -> dict:
    tags = {"clipscale.scaling.excluded": ",".join(excluded) or "none", "clipscale.scaling.target": target,
            f"clipscale.scaling.near_chance.{task}": ",".join(chance) or "none"}
    if loss is not None:
        tags["clipscale.scaling.val_loss.law"] = loss.loss_law.chosen
        tags["clipscale.scaling.val_loss.law_reason"] = loss.loss_law.reason
    return tags


def target_metrics(t) -> dict[str, float]:
    """`scaling/<name>/...` for one TargetFit (val_loss or a task); {} for None."""
    if t is None:
        return {}
    p = f"scaling/{t.name}"
    law = t.law
    m = {f"{p}/a": law.params["a"], f"{p}/b": law.params["b"], f"{p}/r2": law.r2, f"{p}/n_points": len(t.y)}
    for name, (lo, hi) in law.ci.items():
        key = "E" if name == "E_inf" else name
        m[f"{p}/{key}_ci_lo"], m[f"{p}/{key}_ci_hi"] = lo, hi
    if t.loss_law is not None:
        m[f"{p}/E"] = t.loss_law.E
        for form in ("power", "saturating"):
            f = getattr(t.loss_law, form)
            if f is not None:
                m.update({f"{p}/{form}/{'E' if k == 'E_inf' else k}": v for k, v in f.params.items()})
                m[f"{p}/{form}/r2"] = f.r2
    if t.holdout is not None:
        worst, top = max(t.holdout.points, key=lambda q: q.rel_error), t.top
        m.update({f"{p}/holdout_rel_error": worst.rel_error, f"{p}/holdout_abs_error": worst.abs_error,
                  f"{p}/holdout_actual": top.actual, f"{p}/holdout_pred": top.predicted,
                  f"{p}/holdout_pi_lo": top.pi_lo, f"{p}/holdout_pi_hi": top.pi_hi,
                  f"{p}/holdout_covered": float(top.covered)})
    m.update({f"{p}/seed_sd/{rung}": sd for rung, sd in t.seed_sd.items()})
    return {k: float(v) for k, v in m.items() if v is not None and math.isfinite(v)}


def _floor_text(sigmoid: dict) -> str:
    how = "given by scaling.error_floor" if sigmoid.get("floor_fixed") else "fitted"
    return f"error floor {sigmoid['floor']:.3g} ({how})"


def twostep_metrics(task: str, two) -> dict[str, float]:
    if two is None:
        return {}
    p = f"scaling/{task}/twostep"
    m = {f"{p}_pred": two.error_pred, f"{p}_actual": two.error_actual, f"{p}_abs_error": two.abs_error,
         f"{p}_pi_lo": two.error_lo, f"{p}_pi_hi": two.error_hi, f"{p}_loss_pred": two.loss_pred,
         f"{p}_sigmoid_r2": two.sigmoid.r2, f"{p}_floor": two.sigmoid.floor}
    return {k: float(v) for k, v in m.items() if math.isfinite(v)}


def _plots(scaling, tmp: Path, df, x, task, loss, err, histories, excluded, refs) -> None:
    note = f"; left out: {', '.join(excluded)}" if excluded else ""
    for t in (err, loss):
        if t is None:
            continue
        rows = df["rung"].astype(str).isin(t.labels)
        near = df[~rows & df[t.column].notna()] if t.chance is not None else df.iloc[:0]
        y_label = "validation loss" if t.name == VAL_LOSS else f"zero-shot error ({task})"
        law = f"{t.loss_law.chosen} law; " if t.loss_law is not None else ""
        scaling.plot_fit(t.law, tmp / f"{t.name}_vs_{x}", x=t.x, y=t.y, labels=t.labels, holdout=t.holdout,
                         yerr=t.yerr, left_out=(near[x].to_numpy(float), near[t.column].to_numpy(float),
                                                near["rung"].astype(str).to_numpy()),
                         x_label=X_LABELS.get(x, x), y_label=y_label, title=f"{law}{len(t.y)} rungs{note}",
                         references=refs if t is err else None)
    if histories is not None and len(histories.dropna(subset=["val/loss", "train/flops"])) >= 2:
        h = histories.dropna(subset=["val/loss", "train/flops"])
        frontier = _quiet(scaling.fit_frontier, h["train/flops"].to_numpy(float), h["val/loss"].to_numpy(float))
        scaling.plot_loss_curves(histories, tmp / "val_loss_curves", frontier=frontier,
                                 title="validation loss during training, every rung and seed")
    for shift_col in [c for c in df.columns if c.startswith("zeroshot/") and c.endswith("-shift/top1")]:
        base = shift_col.replace("-shift/top1", "/top1")
        if base in df.columns:
            name = shift_col.split("/")[1].removesuffix("-shift")
            scaling.plot_effective_robustness(df[base].to_numpy(float), df[shift_col].to_numpy(float),
                                              tmp / f"robustness_{name}", labels=df["rung"].astype(str).to_numpy(),
                                              task=name)


def _law_dict(t) -> dict | None:
    if t is None:
        return None
    d = {"a": t.law.params["a"], "b": t.law.params["b"], "E": t.law.params.get("E_inf", 0.0), "r2": t.law.r2,
         "form": t.law.form, "n_points": len(t.y), "ci": {k: list(v) for k, v in t.law.ci.items()},
         "seed_sd": t.seed_sd, "skipped": t.skipped}
    if t.loss_law is not None:
        d.update(law=t.loss_law.chosen, law_reason=t.loss_law.reason)
    if t.holdout is not None:
        d["holdout"] = [{"rung": q.label, "predicted": q.predicted, "actual": q.actual, "rel_error": q.rel_error,
                         "abs_error": q.abs_error, "pi_lo": q.pi_lo, "pi_hi": q.pi_hi, "covered": q.covered}
                        for q in t.holdout.points]
    return d


def _result(target, task, loss, err, two, chance) -> dict:
    """The returned dict: both laws, the two-step prediction, and the target's law on top
    (a, b, r2, ci, holdout: the keys callers read before targets existed)."""
    laws = {VAL_LOSS: _law_dict(loss), task: _law_dict(err)}
    head_name = VAL_LOSS if target == VAL_LOSS else task
    if laws[head_name] is None:  # e.g. runs from before val/loss: the other law heads
        head_name = task if head_name == VAL_LOSS else VAL_LOSS
    head = laws[head_name] or {}
    out = {"laws": laws, "headline": head_name if head else None, "near_chance": chance,
           "twostep": None if two is None else two.to_dict()}
    out.update({k: head[k] for k in ("a", "b", "E", "r2", "ci", "holdout") if k in head})
    return out


def _fmt_law(name: str, d: dict, x: str) -> str:
    e = f"{d['E']:.4g} + " if d.get("E") else ""
    what, sym = ("val loss", "L") if name == VAL_LOSS else (f"{name} error", "error")
    skipped = f"; left out: {', '.join(d['skipped'])}" if d.get("skipped") else ""
    law = f"; {d['law']} law: {d['law_reason']}" if "law" in d else ""
    return (f"{what} vs {x} ({d['n_points']} rungs{skipped}): {sym} = {e}{d['a']:.4g} * C^-{d['b']:.4f}, "
            f"R^2 {d['r2']:.3f} in log space{law}")


def _fmt_holdout(h: dict) -> str:
    pi = f" (95% PI {h['pi_lo']:.4g}..{h['pi_hi']:.4g}, actual {'inside' if h['covered'] else 'outside'})" \
        if math.isfinite(h["pi_lo"]) else ""
    return (f"  held out {h['rung']}: predicted {h['predicted']:.4g}, actual {h['actual']:.4g} "
            f"({h['rel_error']:.1%} off){pi}")


def summary_line(fit: dict) -> str:
    """The closing text: the laws (target first), held-out predictions with intervals, two-step."""
    laws = fit.get("laws") or {}
    order = [n for n in (fit.get("headline"), VAL_LOSS, fit.get("task")) if n]
    parts = []
    for name in dict.fromkeys(order):
        d = laws.get(name)
        if d is None:
            continue
        parts.append(("scaling: " if not parts else "") + _fmt_law(name, d, fit["x"]))
        parts.extend(_fmt_holdout(h) for h in d.get("holdout", []))
    if not parts:
        parts.append(f"scaling: no law fitted over {fit['n_points']} rungs (no val/loss; {fit.get('task')} "
                     f"near chance on {', '.join(fit.get('near_chance') or []) or 'no rung'})")
    two = fit.get("twostep")
    if two:
        parts.append(f"two-step ({fit['task']} error from predicted loss {two['loss_pred']:.4g}) for {two['rung']}: "
                     f"predicted {two['error_pred']:.3f} (95% PI {two['error_lo']:.3f}..{two['error_hi']:.3f}), "
                     f"actual {two['error_actual']:.3f}, abs error {two['abs_error']:.3f}; "
                     + _floor_text(two["sigmoid"]))
    for r in fit.get("references") or []:
        parts.append(f"reference {r['model']} (not fitted): {fit['task']} error {r['actual']:.3f}, "
                     f"the law predicts {r['predicted']:.3f} at its compute {r['x']:.3g}")
    if fit.get("near_chance"):
        parts.append(f"near chance on {fit['task']} (left out of its error law): {', '.join(fit['near_chance'])}")
    if fit.get("excluded"):
        parts.append(f"left out (not finished): {', '.join(fit['excluded'])}")
    return "\n".join(parts)


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
