"""Placement groups left behind by stopped trials, found and removed from the driver.

A Tune trial that a scheduler stops (ASHA in a learning-rate sweep) or that dies is ended by
killing its actor, and with it the Ray Train controller it hosts. The placement group that
controller made for its workers is owned by the job, not by the controller, so it outlives it:
Ray Train removes it from a helper actor (`PlacementGroupCleaner`) that asks the dashboard's State
API whether the controller still lives. clipscale starts Ray without the dashboard, so locally
that question always fails and the group is never removed. On 2 CPUs one leaked worker share was
enough to starve Ray Data of the CPU its decode tasks need, and the next trials hung.

The GCS knows the answer without the dashboard: every placement group records whether the actor
that created it is dead. `reap()` removes the live groups whose creating actor is dead; groups a
driver made (Tune's own trial groups, which have no creating actor) are never touched.
"""

from __future__ import annotations

import time

try:
    from ray import tune

    _Callback = tune.Callback
except ImportError:  # the library imports without Ray; the callback is only built where Ray runs
    _Callback = object


def orphaned_placement_groups() -> list[bytes]:
    """Ids of CREATED (or still pending) placement groups whose creating actor is dead."""
    import ray
    from ray.core.generated import gcs_pb2

    # Ray's public placement_group_table() leaves out the creator fields, so read the GCS table.
    accessor = ray._private.state.state._connect_and_get_accessor()
    out = []
    for blob in accessor.get_placement_group_table():
        pg = gcs_pb2.PlacementGroupTableData.FromString(blob)
        live = pg.state != gcs_pb2.PlacementGroupTableData.REMOVED
        made_by_actor = not ray.ActorID(pg.creator_actor_id).is_nil()  # a driver's groups have a nil creator
        if live and made_by_actor and pg.creator_actor_dead and not pg.is_detached:
            out.append(pg.placement_group_id)
    return out


def reap() -> int:
    """Remove every orphaned placement group; returns how many. Never raises: a failure here must
    not end a sweep, it only leaves the group to Ray (as before)."""
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    try:
        orphans = orphaned_placement_groups()
        for pg_id in orphans:
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(pg_id)))
    except Exception as e:  # noqa: BLE001 - best effort, said once per failure
        print(f"clipscale: warning: could not check for placement groups of stopped trials: {e}", flush=True)
        return 0
    return len(orphans)


class PlacementGroupReaper(_Callback):
    """A Tune callback: after a trial ends, and every `every_s` seconds of Tune's loop, `reap()`.
    The loop check catches a group whose controller died only after its trial was reported ended."""

    def __init__(self, every_s: float = 2.0):
        self.every_s, self.last = every_s, 0.0
        self.reaped = 0

    def _maybe(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= self.every_s:
            self.last = now
            self.reaped += reap()

    def on_step_end(self, iteration, trials, **info):
        self._maybe()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._maybe(force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._maybe(force=True)
