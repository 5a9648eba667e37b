"""Run one function in many threads at once (races against the database)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def run_at_once(work: Callable[[int], Any], count: int, *, timeout: float = 120.0) -> list[Any]:
    """Call `work(n)` for n in range(count), each in its own thread, all released together.

    Returns the results in thread order; re-raises the first exception a thread raised.
    Each thread closes its own database connection before it ends (the test database
    cannot be dropped while one is open).
    """
    from django.db import connection

    start = threading.Barrier(count)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            start.wait(30)
            results[n] = work(n)
        except BaseException as exc:  # handed to the test below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    if errors:
        raise errors[0]
    return results
