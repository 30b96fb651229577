"""The worker setup hook that drops Ray Train's State-API warning (clipscale.ray_logging); the
end-to-end check, a local ladder's console, is in tests/test_reaper.py."""

from __future__ import annotations

import logging

from clipscale import ray_logging


def _passes(logger: logging.Logger, message: str) -> bool:
    record = logger.makeRecord(logger.name, logging.WARNING, __file__, 1, message, (), None)
    return logger.filter(record)


def test_only_the_state_api_warning_is_dropped_and_the_hook_is_idempotent():
    logger = logging.getLogger(ray_logging.CLEANER_LOGGER)
    before = list(logger.filters)
    try:
        ray_logging.quiet_placement_group_cleaner()
        ray_logging.quiet_placement_group_cleaner()
        assert len(logger.filters) == len(before) + 1
        assert not _passes(logger, ray_logging.STATE_API_NOISE + ". State API may be temporarily unavailable.")
        assert _passes(logger, "Failed to clean up placement group: boom")
        assert _passes(logging.getLogger("ray.train"), ray_logging.STATE_API_NOISE)  # other loggers untouched
    finally:
        logger.filters[:] = before


def test_the_hook_is_named_by_a_module_path_ray_can_import():
    module, _, name = ray_logging.SETUP_HOOK.rpartition(".")
    assert module == "clipscale.ray_logging" and getattr(ray_logging, name) is ray_logging.quiet_placement_group_cleaner
