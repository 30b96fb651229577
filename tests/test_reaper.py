"""The driver removes placement groups whose creating actor died (clipscale.ladder.reaper): what Ray
Train's own cleaner does only when the dashboard's State API answers, which it does not locally."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.slow  # a Ray instance


def test_a_dead_actors_group_is_removed_and_a_drivers_group_kept(ray_local):
    import ray
    from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group

    from clipscale.ladder.reaper import PlacementGroupReaper, orphaned_placement_groups

    @ray.remote(num_cpus=0)
    class Controller:  # stands in for a Ray Train controller: it makes its workers' group
        def make(self):
            pg = placement_group([{"CPU": 0.5}])
            ray.get(pg.ready())
            return pg.id.binary()

    drivers = placement_group([{"CPU": 0.5}])  # as Tune makes a trial's group: no creating actor
    ray.get(drivers.ready())
    controller = Controller.remote()
    leaked = ray.get(controller.make.remote())
    try:
        assert leaked not in orphaned_placement_groups()  # its creator still lives
        ray.kill(controller)
        deadline = time.monotonic() + 30
        while leaked not in orphaned_placement_groups() and time.monotonic() < deadline:
            time.sleep(0.2)
        reaper = PlacementGroupReaper()
        reaper.on_trial_complete(0, [], None)
        assert reaper.reaped == 1
        assert orphaned_placement_groups() == []
        assert placement_group_table(drivers)["state"] == "CREATED"
    finally:
        remove_placement_group(drivers)


def test_a_local_ladder_prints_no_state_api_warnings(tmp_path, s3, s3_corpus):
    """A Ray that clipscale starts has no dashboard: Ray Train's cleaner would warn once a second
    that its State API query failed. The worker setup hook drops exactly that warning; the trial's
    own output still reaches the console."""
    import os
    import subprocess
    import sys

    from clipscale.ray_logging import STATE_API_NOISE
    from tests.test_job_submit import REPO, micro_config

    config = micro_config(tmp_path, s3, s3.uri("corpus"), "quiet", n_rungs=1)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "experiments/ladder.py", "--config", str(config)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    logs = out.stdout + out.stderr
    assert out.returncode == 0, logs[-3000:]
    assert "[j0] step" in logs  # the workers' lines are forwarded, so silence below is not a mute console
    assert "PlacementGroupCleaner" in logs or "TrainController" in logs
    assert STATE_API_NOISE not in logs
