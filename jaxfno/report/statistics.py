"""Statistics of a study (SPEC §7.2): proportions with Wilson intervals, one-sided Fisher tests
against a reference cell, Kaplan–Meier curves of the time to divergence, log-rank tests."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion k/n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def fisher_less(k: int, n: int, k_ref: int, n_ref: int) -> float:
    """One-sided Fisher exact p-value that k/n is a lower proportion than k_ref/n_ref (a remedy
    against ``stable``): small when the remedy collapses less often."""
    table = [[k, n - k], [k_ref, n_ref - k_ref]]
    return float(stats.fisher_exact(table, alternative="less").pvalue)


def stratified_fisher_less(tables: Sequence[tuple[int, int, int, int]]) -> float:
    """One-sided exact test over strata (e.g. branch points), each a table (k, n, k_ref, n_ref) as
    in ``fisher_less``: conditional on every stratum's margins, the total of k is a sum of
    independent hypergeometric counts under the null; p = P(total ≤ observed). One stratum gives
    ``fisher_less``."""
    pmf = np.ones(1)
    for k, n, k_ref, n_ref in tables:
        events = k + k_ref
        support = np.arange(0, n + 1)
        pmf = np.convolve(pmf, stats.hypergeom(n + n_ref, events, n).pmf(support))
    return float(min(1.0, pmf[: sum(t[0] for t in tables) + 1].sum()))


def paired_sign_less(pairs: Sequence[tuple[bool, bool]]) -> float:
    """One-sided exact sign test over matched pairs (treated, reference) of a binary endpoint (e.g.
    a remedy's branch and the null branch with the same data order): under the null each
    discordant pair is either way with probability 1/2; p = P(at most the observed number of
    discordant pairs in which only the treated one reached the endpoint)."""
    only_treated = sum(1 for t, r in pairs if t and not r)
    discordant = only_treated + sum(1 for t, r in pairs if r and not t)
    return float(stats.binom(discordant, 0.5).cdf(only_treated)) if discordant else 1.0


def kaplan_meier(times: Sequence[float], observed: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """The survival curve's steps: times (0 first) and S(t) just after each. Censored runs
    leave the risk set after the events at their time."""
    t, e = np.asarray(times, float), np.asarray(observed, bool)
    grid, surv, s = [0.0], [1.0], 1.0
    for time in np.unique(t[e]):
        at_risk = np.sum(t >= time)
        s *= 1.0 - np.sum((t == time) & e) / at_risk
        grid.append(float(time))
        surv.append(s)
    return np.array(grid), np.array(surv)


def km_median(times: Sequence[float], observed: Sequence[bool]) -> float | None:
    """The first time at which S(t) ≤ 0.5; None when the curve stays above (not reached)."""
    grid, surv = kaplan_meier(times, observed)
    below = np.flatnonzero(surv <= 0.5)
    return float(grid[below[0]]) if below.size else None


def logrank_p(times: Sequence[float], observed: Sequence[bool], ref_times: Sequence[float],
              ref_observed: Sequence[bool]) -> float | None:
    """Two-sided log-rank p-value of two groups' times to divergence; None without any event
    (nothing to compare)."""
    if not (np.any(observed) or np.any(ref_observed)):
        return None

    def data(t, e):
        t, e = np.asarray(t, float), np.asarray(e, bool)
        return stats.CensoredData(uncensored=t[e], right=t[~e])

    return float(stats.logrank(data(times, observed), data(ref_times, ref_observed)).pvalue)
