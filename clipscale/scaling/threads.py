"""Keep BLAS single-threaded around the many tiny optimisations the fits run.

L-BFGS-B calls BLAS on 3- to 5-element vectors. With a multithreaded OpenBLAS on a busy
machine each of those calls can wait on worker threads, which made the joint fit ~10x
slower on a loaded 2-core box. One thread is always right for problems this small.
"""

from __future__ import annotations

import contextlib

try:  # threadpoolctl ships with scikit-learn, a project dependency
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - without it the fits are still correct, only slower
    threadpool_limits = None


def single_thread_blas():
    if threadpool_limits is None:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")
