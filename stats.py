"""
Interval estimates for the results this project reports: success rates (binomial), differences of
success rates between two policies, and differences of per-seed means. Plain math, no SciPy.

    wilson(k, n)                     -> 95% interval of a success rate k / n
    newcombe(k1, n1, k2, n2)         -> 95% interval of the difference k1/n1 - k2/n2
    newcombe_paired(x, y)            -> the same for two 0/1 outcomes on the same episodes (pairs x[i], y[i])
    mean_diff_interval(xs, ys)       -> 95% interval of mean(xs) - mean(ys) (Welch)
    spearman(x, y)                   -> Spearman's rank correlation across runs (e.g. CKNNA against success)
    spearman_interval(x, y)          -> its 95% bootstrap interval over runs; spearman_p(x, y): permutation p
"""
import itertools
import math

import numpy as np

Z95 = 1.959964   # the standard normal's 97.5% quantile


def wilson(k, n, z=Z95):
    """95% Wilson score interval of a binomial proportion k / n (good at small n and at 0 or n)."""
    if n == 0:
        return 0.0, 0.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))   # exact at 0, n


def newcombe(k1, n1, k2, n2, z=Z95):
    """95% interval of p1 - p2 for two independent proportions: Newcombe's hybrid score method (his
    method 10, 1998), built from the two Wilson intervals. Returns (difference, low, high)."""
    p1, p2 = k1 / n1, k2 / n2
    (l1, u1), (l2, u2) = wilson(k1, n1, z), wilson(k2, n2, z)
    d = p1 - p2
    return d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def newcombe_paired(x, y, z=Z95):
    """95% interval of mean(x) - mean(y) for paired 0/1 outcomes (two policies on the same seeded episodes):
    Newcombe's paired method 10 (1998), his hybrid score interval with the Wilson intervals of both rates, corrected
    by phi, the correlation of the pairs (phi = 0: exactly newcombe()). Returns (difference, low, high)."""
    x, y = np.asarray(x, bool), np.asarray(y, bool)
    n = len(x)
    a, b, c, d = (np.sum(x & y), np.sum(x & ~y), np.sum(~x & y), np.sum(~x & ~y))   # the 2 x 2 table of pairs
    p1, p2 = (a + b) / n, (a + c) / n
    (l1, u1), (l2, u2) = wilson(a + b, n, z), wilson(a + c, n, z)
    denom = math.sqrt(float((a + b) * (c + d) * (a + c) * (b + d)))
    phi = (float(a * d) - float(b * c)) / denom if denom else 0.0
    low = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    high = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return p1 - p2, p1 - p2 - low, p1 - p2 + high


def paired_normal(x, y, z=Z95):
    """95% normal interval of mean(x - y) over paired outcomes: the mean per-pair difference +- z sd / sqrt(n), the
    analysis the README's study plan fixed before its runs (newcombe_paired is the better-behaved one near 0 and 1).
    Returns (difference, low, high)."""
    d = np.asarray(x, float) - np.asarray(y, float)
    h = z * d.std() / math.sqrt(len(d))
    return d.mean(), d.mean() - h, d.mean() + h


def t_quantile(df, p=0.975):
    """Student's t quantile by bisection on its CDF (regularised incomplete beta by continued fraction)."""
    def cdf(t):
        x = df / (df + t * t)
        return 1 - 0.5 * _betainc(df / 2, 0.5, x) if t > 0 else 0.5 * _betainc(df / 2, 0.5, x)
    lo, hi = 0.0, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def _betainc(a, b, x):
    """Regularised incomplete beta I_x(a, b) (Numerical Recipes' continued fraction, Lentz's method)."""
    if x <= 0 or x >= 1:
        return float(x >= 1)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(1 - x))
    if x > (a + 1) / (a + b + 2):
        return 1 - _betainc(b, a, 1 - x)
    f, c, d = 1.0, 1.0, 0.0
    for i in range(400):
        m = i // 2
        if i == 0:
            num = 1.0
        elif i % 2 == 0:
            num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            num = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1 + num * d
        d = 1 / (d if abs(d) > 1e-300 else 1e-300)
        c = 1 + num / (c if abs(c) > 1e-300 else 1e-300)
        f *= c * d
        if abs(1 - c * d) < 1e-14:
            break
    return front * (f - 1) / a


def mean_diff_interval(xs, ys, p=0.975):
    """95% Welch interval of mean(xs) - mean(ys) (e.g. per-seed CKNNA of two variants). Returns
    (difference, low, high); NaN bounds when either side has fewer than 2 values."""
    nx, ny = len(xs), len(ys)
    mx, my = sum(xs) / nx, sum(ys) / ny
    if nx < 2 or ny < 2:
        return mx - my, float("nan"), float("nan")
    vx = sum((x - mx) ** 2 for x in xs) / (nx - 1) / nx
    vy = sum((y - my) ** 2 for y in ys) / (ny - 1) / ny
    se = math.sqrt(vx + vy)
    if se == 0:
        return mx - my, mx - my, mx - my
    df = se ** 4 / ((vx ** 2) / (nx - 1) + (vy ** 2) / (ny - 1))   # Welch-Satterthwaite
    h = t_quantile(df, p) * se
    return mx - my, mx - my - h, mx - my + h


def verdict(low, high):
    """A claim 'A > B' from the interval of A - B: reproduced (all above 0), contradicted (all below 0),
    inconclusive (the interval holds 0)."""
    return "reproduced" if low > 0 else "contradicted" if high < 0 else "inconclusive"


# --- rank correlation across runs: does one measure (CKNNA) order the runs as another (success) does? ---

def ranks(x):
    """Ranks 1..n of x (n,), ties given their average rank."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):                                          # ties share their mean rank
        r[x == v] = r[x == v].mean()
    return r


def spearman(x, y):
    """Spearman's rank correlation: Pearson's r of the (tie-averaged) ranks; NaN if x or y is constant."""
    rx, ry = ranks(x) - ranks(x).mean(), ranks(y) - ranks(y).mean()
    den = np.sqrt((rx ** 2).sum() * (ry ** 2).sum())
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


def spearman_interval(x, y, n_boot=2000, seed=0):
    """95% percentile interval of Spearman's rho over runs resampled with replacement. Resamples where x or y
    is constant have no rho and are left out. Returns (lo, hi, resamples used); (nan, nan, 0) under 3 runs."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 3:
        return float("nan"), float("nan"), 0
    rng = np.random.default_rng(seed)
    rho = [spearman(x[i], y[i]) for i in rng.integers(0, len(x), (n_boot, len(x)))]
    rho = np.array([r for r in rho if np.isfinite(r)])
    if len(rho) == 0:
        return float("nan"), float("nan"), 0
    return float(np.percentile(rho, 2.5)), float(np.percentile(rho, 97.5)), len(rho)


def spearman_p(x, y, n_perm=10000, seed=0):
    """Two-sided p-value of Spearman's rho under no association: the fraction of orderings of y whose |rho| is at
    least the observed one; every ordering when there are at most 8 runs (exact), else n_perm random ones."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    rho = abs(spearman(x, y))
    if not np.isfinite(rho):
        return float("nan")
    rng = np.random.default_rng(seed)
    orders = itertools.permutations(range(len(y))) if len(y) <= 8 else (rng.permutation(len(y)) for _ in range(n_perm))
    hits = [abs(spearman(x, y[list(o)])) >= rho - 1e-12 for o in orders]
    return float(np.mean(hits))
