"""`clipscale status`: where a ladder stands, read from MLflow, so it works from any machine that
reaches the tracking server and for ladders started by someone else.

Per rung: its state (MLflow run status; a failure's reason from `clipscale.failure_reason`),
samples seen out of its budget (latest `train/samples_seen` against param `samples`),
throughput (latest `train/samples_per_sec`) and the time left at that throughput. Then the
current fit, from the parent run's `scaling/<target>/...` metrics.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from dataclasses import dataclass, field

from clipscale import names
from clipscale.monitor.locate import Ladder, find_ladder, public_uri
from clipscale.tracking import TAG_RUNG, TAG_STATUS_REASON, tracking_uri

STATES = {"SCHEDULED": "scheduled", "RUNNING": "running", "FINISHED": "finished", "FAILED": "failed",
          "KILLED": "killed"}
FIT_KEYS = ("a", "b", "E", "r2", "n_points", "holdout_rel_error")


@dataclass
class RungStatus:
    name: str
    state: str
    samples_seen: int
    budget: int | None
    samples_per_sec: float | None
    reason: str = ""
    planned_flops: float = 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the last measured throughput; only a running rung has one."""
        if self.state != "running" or not self.samples_per_sec or not self.budget:
            return None
        return max(self.budget - self.samples_seen, 0) / self.samples_per_sec


@dataclass
class LadderStatus:
    ladder: str
    experiment: str
    parent_id: str
    parent_state: str
    started: dt.datetime | None
    uri: str
    rungs: list[RungStatus] = field(default_factory=list)
    fit: dict[str, dict[str, float]] = field(default_factory=dict)  # target -> {key: value}

    @property
    def done(self) -> bool:
        return self.parent_state != "running"


def rung_status(run) -> RungStatus:
    m, p, tags = run.data.metrics, run.data.params, run.data.tags
    state = STATES.get(run.info.status, run.info.status.lower())
    # A finished rung's exact count is compute/samples; train/samples_seen lags by up to a log interval.
    seen = m.get("compute/samples") if state == "finished" else None
    seen = seen if seen is not None else m.get("train/samples_seen", 0.0)
    reason = tags.get(TAG_STATUS_REASON, "").strip().splitlines()
    name = tags.get(TAG_RUNG) or run.info.run_name
    if names.TAG_COOLDOWN_FRACTION in tags:  # a cooldown branch: tagged with its rung, shown as itself
        name = names.cooldown_name(name, float(tags[names.TAG_COOLDOWN_FRACTION]))
    return RungStatus(name=name, state=state, samples_seen=int(seen),
                      budget=_int(p.get("samples")), samples_per_sec=m.get("train/samples_per_sec"),
                      reason=reason[-1] if reason else "", planned_flops=float(p.get("train_flops_planned", 0) or 0))


def read_status(ladder: Ladder) -> LadderStatus:
    parent = ladder.tracker.run(ladder.parent_id)  # fresh: --watch calls this repeatedly
    start = parent.info.start_time
    status = LadderStatus(
        ladder=ladder.name, experiment=ladder.experiment, parent_id=ladder.parent_id,
        parent_state=STATES.get(parent.info.status, parent.info.status.lower()),
        started=dt.datetime.fromtimestamp(start / 1000, dt.timezone.utc) if start else None,
        uri=public_uri(ladder.tracker.uri))
    status.rungs = sorted((rung_status(r) for r in ladder.tracker.children(ladder.parent_id)),
                          key=lambda r: (r.planned_flops, r.name))
    for key, value in parent.data.metrics.items():
        parts = key.split("/")
        if len(parts) >= 3 and parts[0] == "scaling":
            status.fit.setdefault(parts[1], {})["/".join(parts[2:])] = value
    return status


def format_status(st: LadderStatus) -> str:
    started = f", started {st.started:%Y-%m-%d %H:%M} UTC" if st.started else ""
    head = (f"ladder {st.ladder!r}  experiment {st.experiment!r}  parent run {st.parent_id} "
            f"({st.parent_state}{started})\ntracking {st.uri}")
    counts = {s: sum(r.state == s for r in st.rungs) for s in dict.fromkeys(r.state for r in st.rungs)}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items()) or "no rungs yet"
    rows = [{"rung": r.name, "state": r.state, "samples": _samples(r),
             "samples/s": f"{r.samples_per_sec:,.0f}" if r.samples_per_sec else "-",
             "ETA": _duration(r.eta_s), "reason": r.reason[:100]} for r in st.rungs]
    if not any(r.reason for r in st.rungs):
        for row in rows:
            row.pop("reason")
    lines = [head, f"{len(st.rungs)} rungs: {summary}", _table(rows) if rows else "", ""]
    lines += [format_fit(t, v) for t, v in sorted(st.fit.items())] or ["fit: waits for 2 finished rungs"]
    return "\n".join(lines)


def format_fit(target: str, v: dict[str, float]) -> str:
    if "a" not in v or "b" not in v:
        return f"fit {target}: " + ", ".join(f"{k} {x:.4g}" for k, x in sorted(v.items()) if k in FIT_KEYS)
    law = f"{v['a']:.3g} * C^-{v['b']:.4f}" + (f" + {v['E']:.3g}" if "E" in v else "")
    out = f"fit {target} ({int(v.get('n_points', 0))} rungs): {law}"
    if "b_ci_lo" in v and "b_ci_hi" in v:
        out += f", b 95% CI {v['b_ci_lo']:.4f}..{v['b_ci_hi']:.4f}"
    if "r2" in v:
        out += f", R^2 {v['r2']:.3f}"
    if "holdout_rel_error" in v:
        out += f"; held-out largest rung off by {v['holdout_rel_error']:.1%}"
    return out


def _table(rows: list[dict[str, str]]) -> str:
    """Names and words left-aligned, numbers right-aligned."""
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    left = {"rung", "state", "reason"}

    def line(cells: dict[str, str]) -> str:
        return "  ".join(cells[c].ljust(widths[c]) if c in left else cells[c].rjust(widths[c]) for c in cols).rstrip()
    return "\n".join([line({c: c for c in cols})] + [line(r) for r in rows])


def _samples(r: RungStatus) -> str:
    if not r.budget:
        return f"{r.samples_seen:,}/?"
    return f"{r.samples_seen:,}/{r.budget:,} ({r.samples_seen / r.budget:.0%})"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _int(value: str | None) -> int | None:
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None


# ---- the command ------------------------------------------------------------------------


def add_arguments(p) -> None:
    which = p.add_mutually_exclusive_group()
    which.add_argument("--experiment", help="MLflow experiment; its newest ladder (default: the newest in the store)")
    which.add_argument("--parent-run", metavar="RUN_ID", help="a ladder's parent run id")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    p.add_argument("--watch", action="store_true", help="refresh until the ladder's parent run ends")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between refreshes with --watch")


def register(subparsers) -> None:
    p = subparsers.add_parser("status", help="per-rung progress and the current fit of a ladder, from MLflow")
    add_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    uri = tracking_uri(args.tracking_uri)
    try:
        ladder = find_ladder(uri, args.experiment, args.parent_run)
    except LookupError as e:
        print(f"clipscale status: {e}", file=sys.stderr)
        return 2
    clear = args.watch and sys.stdout.isatty()
    try:
        while True:
            st = read_status(ladder)
            print(("\033[H\033[2J" if clear else "") + format_status(st) + ("\n" if args.watch else ""), flush=True)
            if not args.watch or st.done:
                return 0
            time.sleep(max(args.interval, 1.0))
    except KeyboardInterrupt:
        return 0
