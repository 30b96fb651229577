"""The Ray side of a learning-rate sweep: one Tune search per rung, its trials and their progress.

Imported only when a sweep runs (it imports Ray at module level); the plan, the fit and the
fragment live in `sweep.py` and `sweep_run.py`.

Each trial is a function that fits one TorchTrainer (`fit_rung`), as a ladder's trial does, at
the trial's learning rate and short budget, without the final zero-shot evaluation. Its workers
report `val/loss` with `samples_seen` to Ray Train at every validation point
(`hooks.ValidationHook`); `ValidationReport` passes those reports on to Tune, where ASHA compares
trials at the same samples seen and stops the worse ones. A stopped trial's actor is ended by
Tune, and with it the Train controller and workers it owns, so its child run is closed here, in
the driver (`SweepProgress`); the placement group its controller held is removed there too
(`reaper.py`: without the dashboard, Ray Train's own cleaner cannot tell the controller died).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from clipscale import names
from clipscale.config import ExperimentConfig, RungConfig
from clipscale.ladder.provision import Corpus
from clipscale.ladder.reaper import PlacementGroupReaper
from clipscale.ladder.sweep import AshaPlan, record_outcome
from clipscale.tracking import Tracker


@dataclass
class TrialRef:
    """One planned trial as its Tune trial needs it; plain data."""

    key: str
    rung: dict  # the RungConfig at the trial's LR and budget, as a dict
    run_id: str  # its MLflow child run
    train_name: str  # its Ray Train run: a rerun of an interrupted trial resumes from its checkpoint
    samples: int


@dataclass
class SweepContext:
    """What every trial of a sweep needs; plain data so Tune can ship it to the trial actor."""

    cfg: dict
    corpus: Corpus  # as a ladder's trials get it (ladder/trial.py), a mixture's sources included
    uri: str
    experiment: str
    trials: dict[float, TrialRef]  # learning rate -> trial (a rung's planned LRs are distinct)


class ValidationReport(TuneReportCallback):
    """Only the workers' validation reports go on to Tune. Their checkpoint reports carry no
    `val/loss`, and Tune refuses a result without the metric its scheduler follows."""

    def after_report(self, run_context, metrics, checkpoint):
        if metrics and names.VAL_LOSS in metrics[0]:
            super().after_report(run_context, metrics, None)


def sweep_trial(config: dict, ctx: SweepContext) -> dict:
    """One trial: fit the rung at this LR; close its child run unless the scheduler stops it first."""
    from clipscale.config import from_dict
    from clipscale.train.job import RungStatus
    from clipscale.train.trainer import fit_rung

    ref = ctx.trials[config["lr"]]
    cfg = from_dict(ExperimentConfig, ctx.cfg)
    rung = from_dict(RungConfig, ref.rung)
    tracker = Tracker.open(ctx.uri, ctx.experiment)
    tracker.set_status(ref.run_id, "RUNNING")
    # An exception is not recorded here: when ASHA stops this trial, Tune aborts its Ray Train run
    # and fit_rung raises (the TrainController "died", exit type INTENDED) before the trial ends.
    # Recording that as "failed" raced SweepProgress's "stopped_early" (seen once in the slow
    # tier). The driver knows which it was: on_trial_complete for a stop, on_trial_error for a failure.
    result = fit_rung(cfg, rung, ctx.corpus.train, tracking_uri=ctx.uri, run_id=ref.run_id, evaluate=False,
                      callbacks=[ValidationReport()], name=ref.train_name, **ctx.corpus.fit_args(),
                      seed=cfg.data.seed)
    if result.status != RungStatus.FINISHED:
        # Too high a learning rate: a result of the sweep (worse than any finite loss), not an error.
        record_outcome(tracker, ref.run_id, "diverged", None, result.samples_seen, result.reason)
        return {names.VAL_LOSS: math.inf, names.SAMPLES_SEEN: result.samples_seen, "outcome": "diverged"}
    loss = tracker.metrics(ref.run_id).get(names.VAL_LOSS, math.nan)  # the last measurement, at the budget
    record_outcome(tracker, ref.run_id, "completed", loss, result.samples_seen)
    return {names.VAL_LOSS: loss, names.SAMPLES_SEEN: result.samples_seen, "outcome": "completed"}


class SweepProgress(tune.Callback):
    """In the driver: a line per trial as it ends, and the child run of a trial that ASHA
    stopped (whose own function never returns) closed with its last measurement."""

    def __init__(self, rung: str, refs: dict[float, TrialRef], uri: str, experiment: str):
        self.rung, self.refs, self.uri, self.experiment = rung, refs, uri, experiment
        self.done = 0

    def _line(self, trial, what: str) -> None:
        self.done += 1
        ref = self.refs[trial.config["lr"]]
        print(f"clipscale: sweep {self.rung} [{self.done}/{len(self.refs)}] {ref.key} lr {trial.config['lr']:.3g}: "
              f"{what}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        ref = self.refs[trial.config["lr"]]
        last = trial.last_result or {}
        loss, samples = last.get(names.VAL_LOSS, math.nan), int(last.get(names.SAMPLES_SEEN, 0))
        tracker = Tracker.open(self.uri, self.experiment)
        if tracker.status(ref.run_id) == "RUNNING":  # ended by the scheduler, not by its own function
            record_outcome(tracker, ref.run_id, "stopped_early", loss, samples)
            outcome = "stopped_early (ASHA)"
        else:
            outcome = tracker.tags(ref.run_id).get(names.TAG_SWEEP_OUTCOME, "completed")
        self._line(trial, f"val/loss {loss:.4f} at {samples:,}/{ref.samples:,} samples, {outcome}")

    def on_trial_error(self, iteration, trials, trial, **info):
        ref = self.refs[trial.config["lr"]]
        tracker = Tracker.open(self.uri, self.experiment)
        if tracker.status(ref.run_id) == "RUNNING":  # the trial's process died before it could say so
            record_outcome(tracker, ref.run_id, "failed", None, 0, error_reason(trial.get_error()))
        self._line(trial, "failed: " + (tracker.tags(ref.run_id).get(names.TAG_STATUS_REASON, "") or "see Ray's log"))


def error_reason(error) -> str:
    """`Type: message` of what ended a trial: the exception raised in the trial (a RayTaskError's
    cause), not Ray's wrapper with its traceback."""
    if error is None:
        return "trial failed"
    cause = getattr(error, "cause", None) or error
    return f"{type(cause).__name__}: {cause}"


def scheduler(asha: AshaPlan) -> ASHAScheduler:
    """ASHA on val/loss, its clock the samples seen. Trials that reach the budget end on their own
    (stop_last_trials=False): their function then closes their run with the final measurement."""
    return ASHAScheduler(time_attr=asha.time_attr, metric=asha.metric, mode=asha.mode, max_t=asha.max_t,
                         grace_period=asha.grace_period, reduction_factor=asha.reduction_factor,
                         stop_last_trials=False)


def tune_rung(rung: str, ctx: SweepContext, asha: AshaPlan, concurrency: int, storage: tuple[str, object | None],
              tune_name: str) -> str:
    """One rung's search: a grid over its planned LRs (the dry run's), ASHA on val/loss. Returns
    the scheduler's class name, for the parent run."""
    from clipscale.ladder.run import _on_driver_node

    sched = scheduler(asha)
    trainable = tune.with_resources(tune.with_parameters(sweep_trial, ctx=ctx), _on_driver_node())
    tuner = tune.Tuner(
        trainable,
        param_space={"lr": tune.grid_search(sorted(ctx.trials))},
        tune_config=tune.TuneConfig(scheduler=sched, max_concurrent_trials=concurrency),
        run_config=tune.RunConfig(name=tune_name, storage_path=storage[0], storage_filesystem=storage[1], verbose=0,
                                  callbacks=[SweepProgress(rung, ctx.trials, ctx.uri, ctx.experiment),
                                             PlacementGroupReaper()]),
    )
    tuner.fit()
    # ASHAScheduler is Tune's name for AsyncHyperBandScheduler (one class); the tag says which the docs call it.
    return "ASHAScheduler" if isinstance(sched, ASHAScheduler) else type(sched).__name__
