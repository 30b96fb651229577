"""Logging set up in Ray's worker processes when clipscale starts Ray itself.

Kept free of heavy imports: Ray runs `quiet_placement_group_cleaner` in every worker process
it starts (`runtime_env["worker_process_setup_hook"]`), before any task or actor runs there.
"""

from __future__ import annotations

import logging

# Ray Train's helper actor that removes a dead controller's placement group (ray/train/v2/
# _internal/execution/controller/placement_group_cleaner.py in the pinned Ray) asks the dashboard's
# State API about the controller once a second and warns on every failure. A Ray that clipscale
# starts has no dashboard, so every query fails: 760 warnings in one `make run`, flooding the
# user's console. clipscale.ladder.reaper does that cleanup from the GCS instead.
CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
STATE_API_NOISE = "Failed to query Ray Train Controller actor state"
SETUP_HOOK = f"{__name__}.quiet_placement_group_cleaner"


class _DropStateApiNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return STATE_API_NOISE not in record.getMessage()


def quiet_placement_group_cleaner() -> None:
    """Drop the cleaner's State-API warning, and only that one (its other warnings still show)."""
    logger = logging.getLogger(CLEANER_LOGGER)
    if not any(isinstance(f, _DropStateApiNoise) for f in logger.filters):
        logger.addFilter(_DropStateApiNoise())
