"""Small statistics shared by the dashboard KPIs and the simulator's summary."""

from __future__ import annotations

import math


def nearest_rank_percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100): always a value that was actually measured.

    None for no values; rounded to 0.1 (milliseconds in every caller).
    """
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return round(ordered[rank - 1], 1)
