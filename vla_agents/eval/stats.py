"""Confidence intervals for success rates. Robot evals run 10-50 episodes per task, where the
normal approximation fails (8/10 would give an upper bound above 100%); Wilson intervals do not."""
from __future__ import annotations

import math


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a success proportion, as fractions in [0, 1].

    With no trials nothing is known, so the interval is the whole (0, 1)."""
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def _combine_wilson(successes_a: int, n_a: int, successes_b: int, n_b: int, phi: float, z: float) -> tuple[float, float]:
    """Newcombe's interval for p_a - p_b from the two Wilson intervals, less their covariance `phi`
    (the correlation of paired outcomes; 0 for independent samples)."""
    low_a, high_a = wilson_interval(successes_a, n_a, z)
    low_b, high_b = wilson_interval(successes_b, n_b, z)
    p_a = successes_a / n_a if n_a else 0.5
    p_b = successes_b / n_b if n_b else 0.5
    down_a, up_a, down_b, up_b = p_a - low_a, high_a - p_a, p_b - low_b, high_b - p_b
    diff = p_a - p_b
    low = diff - math.sqrt(max(0.0, down_a**2 - 2 * phi * down_a * up_b + up_b**2))
    high = diff + math.sqrt(max(0.0, up_a**2 - 2 * phi * up_a * down_b + down_b**2))
    return max(-1.0, low), min(1.0, high)


def diff_interval(successes_a: int, n_a: int, successes_b: int, n_b: int, z: float = 1.96) -> tuple[float, float]:
    """Interval for p_a - p_b from the two Wilson intervals (Newcombe 1998, method 10).

    Use it to ask whether agent A beats agent B: the difference is significant when the interval
    excludes 0."""
    return _combine_wilson(successes_a, n_a, successes_b, n_b, phi=0.0, z=z)


def paired_diff_interval(gained: int, lost: int, both: int, neither: int, z: float = 1.96) -> tuple[float, float]:
    """Interval for p_after - p_before when both agents ran the same seeded episodes (Newcombe 1998,
    paired data, method 10).

    `gained`: episodes only the after-agent solved; `lost`: only the before-agent; `both`/`neither`:
    the rest. The Wilson intervals are combined as in `diff_interval`, less their covariance (phi, the
    correlation of the paired outcomes): seeds that are easy or hard for both agents no longer widen
    the interval, which is what an unpaired interval wastes."""
    counts = (gained, lost, both, neither)
    if min(counts) < 0 or sum(counts) == 0:
        raise ValueError(f"need non-negative counts with at least one episode, got gained={gained}, lost={lost}, "
                         f"both={both}, neither={neither}")
    n = sum(counts)
    after, before = both + gained, both + lost
    margins = after * (n - after) * before * (n - before)
    phi = (both * neither - gained * lost) / math.sqrt(margins) if margins else 0.0
    return _combine_wilson(after, n, before, n, phi, z)


def mcnemar_exact(gained: int, lost: int) -> float:
    """Two-sided exact McNemar p-value for two agents run on the same seeded episodes.

    Only the episodes whose outcome changed carry information: `gained` (B succeeded where A
    failed) and `lost` (the reverse). If neither agent were better, each change would be a fair coin,
    so this is scipy's exact binomial test of `gained` out of `gained + lost` at 1/2."""
    from scipy.stats import binomtest

    if gained < 0 or lost < 0:
        raise ValueError(f"need non-negative counts, got gained={gained}, lost={lost}")
    return binomtest(gained, gained + lost, 0.5).pvalue if gained + lost else 1.0
