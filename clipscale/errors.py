"""Errors shared across clipscale modules."""


class ConfigError(ValueError):
    """A bad config value. The message names the dotted key, the value and what is allowed."""

    def __init__(self, key: str, value, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"config error at {key!r}: got {value!r}; expected {allowed}")


class DataQualityError(RuntimeError):
    """Too many bad samples: the message names the worst shards."""


class TrackingUnavailable(RuntimeError):
    """The tracking server stayed unreachable past `tracking.retry_seconds`; the message names it."""
