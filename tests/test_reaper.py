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
