"""The compute ladder: rungs -> Ray Tune trials -> TorchTrainers -> MLflow.

`run_ladder(cfg)` is the whole product flow for one config:
1. `provision`: relative paths made absolute once, in the driver; the configured shards
   (or the synthetic corpus, generated on first use) and the validation split; the eval sets;
   a corpus too small to train on fails here, before anything starts;
2. `plan`: one entry per (rung, seed) replicate, each with the hash of what decides its result;
3. `run`: the experiment, the parent run and one child run per replicate are found or created
   in the driver, before anything logs from a worker; a lock on the parent run keeps a second
   driver of the same ladder out; finished replicates are skipped;
4. `trial`: the rest run as Tune trials, each a TorchTrainer (which resumes from its last
   checkpoint by run name) that then logs its results; after every one the parent's scaling
   fit and plots are refreshed.
"""

from clipscale.ladder.plan import RungPlan, ladder_hash, plan
from clipscale.ladder.provision import (Corpus, check_corpus_size, ensure_data, ensure_eval, init_ray,
                                        max_concurrent_trials, oversubscription_warning, resolve_paths)
from clipscale.ladder.run import LadderResult, run_ladder, summary_rows

__all__ = ["Corpus", "LadderResult", "RungPlan", "check_corpus_size", "ensure_data", "ensure_eval", "init_ray",
           "ladder_hash", "max_concurrent_trials", "oversubscription_warning", "plan", "resolve_paths", "run_ladder",
           "summary_rows"]
