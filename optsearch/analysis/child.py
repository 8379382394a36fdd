"""Run a function in a forked child process while this one works on: both cores for independent steps.

Used by the analysis (fANOVA beside the forest and the principles) and by the report (the analysis's PNGs
beside the search's); a module of its own so both can import it without an import cycle.
"""

from __future__ import annotations

from typing import Any, Callable

_JOB: tuple[Any, tuple] | None = None  # what the forked child runs: inherited with its memory, never pickled


def _run_job() -> Any:
    assert _JOB is not None
    fn, args = _JOB
    return fn(*args)


def in_child(fn: Any, *args: Any) -> Callable[[], Any]:
    """Start ``fn(*args)`` in a forked child process; returns a function that waits for its result.

    The child gets ``fn`` and ``args`` by forking (nothing is pickled on the way in; only the result comes
    back), and an exception raised in the child is raised again by the returned function. Where fork is
    unavailable, ``fn`` runs here when the result is asked for. Start the child before this process starts
    threads of its own (forking a threaded process copies only the forking thread).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    global _JOB
    if "fork" not in multiprocessing.get_all_start_methods():
        return lambda: fn(*args)
    _JOB = (fn, args)
    try:
        pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))
        future = pool.submit(_run_job)  # forks now, with _JOB set
    finally:
        _JOB = None

    def result() -> Any:
        try:
            return future.result()
        finally:
            pool.shutdown()
    return result


__all__ = ["in_child"]
