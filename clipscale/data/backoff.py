"""A Ray Data execution callback that stops the streaming executor from spinning when idle.

Ray Data's streaming executor loop only blocks (in `ray.wait`) while tasks are in flight.
Once every shard is decoded and the consumer's queue is full, it loops without pause, and it
does so too while tasks run whose ready outputs are held back by backpressure: measured 1.77 s
of CPU in a consumer over 3 s in which the consumer itself only slept, 0.20 s with this
backoff. In a training worker that loop takes a core from the step's intra-op threads (py-spy
on a slow bench_train run: the executor thread active in 40% of samples).

Its own module because it imports Ray Data's internals, which only processes that run a
dataset should pay for.
"""

from __future__ import annotations

import time

from ray.data._internal.execution.execution_callback import ExecutionCallback

MIN_STEP_S = 0.02  # small against a shard decode (100s of ms), which is all it can delay


class IdleBackoff(ExecutionCallback):
    """Spaces scheduling steps at least MIN_STEP_S apart.

    A step that blocked in `ray.wait` for a task is already longer and is not slowed; only the
    steps that return at once, with nothing to do, are, and those are the spin. Keyed on time
    rather than on the executor's state because the spin also happens while tasks run (their
    ready outputs held back by output backpressure), and time needs no Ray Data internals.
    """

    def __init__(self):
        self.last = time.perf_counter()

    def on_execution_step(self, executor) -> None:
        wait = MIN_STEP_S - (time.perf_counter() - self.last)
        if wait > 0:
            time.sleep(wait)
        self.last = time.perf_counter()
