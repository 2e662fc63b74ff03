"""
Exact k nearest neighbours under a linear kernel, at the speed of a float32 GEMM over half the kernel.

CKNNA (alignment_metrics.py) needs, for every row i of F (N, D), the k columns j != i with the largest kernel
value K[i, j] = F_i . F_j, as the reference ranks them: torch.topk over the float64 kernel row,
diagonal -inf (knn_float64 here). knn() returns the same sets, faster:

  1. search: float32 GEMM blocks of the symmetric kernel, each computed once for its rows and its
     columns, keep m = k + EXTRA candidates per row (_candidates);
  2. re-check: the candidates' kernel values in float64, first for the k + 1 best, then for all m;
  3. a row is settled when float32's error bound proves that no other column can reach the k-th
     value and the k-th and (k+1)-th are apart by more than float64's own error (see knn());
  4. the rows that are not (ties at the k-th value, duplicate rows, near-duplicates float32 cannot
     resolve) go through knn_float64, so their ties break exactly as the float64 path's.

    python bench.py --cknna        # time, memory and the fraction of the float32 GEMM rate
"""
import math
from contextlib import contextmanager

import torch

# -----------------------------------------------------------------------------
CHUNK_BYTES = 256 * 2**20  # one (chunk, N) float64 block of the kernel in knn_float64
BLOCK = 4096               # rows and columns of one float32 kernel block in the search (64 MB)
EXTRA = 8                  # candidates kept per row beyond the k neighbours
RECHECK_BYTES = 64 * 2**20  # the candidates' rows gathered at once in the float64 re-check

# -----------------------------------------------------------------------------
# the exact path: the reference's op


def knn_float64(F, k, rows=None):
    """The exact search as the reference does it: float64 kernel rows, diagonal -inf, torch.topk.
    F (N, D) float64, rows (R,) int64 (None = all N) -> idx (R, k) int64, val (R, k) float64 with
    val[r, c] = F_rows[r] . F_idx[r, c]. Memory: one (chunk, N) block, chunk = CHUNK_BYTES / (8 N)."""
    N = F.shape[0]
    rows = torch.arange(N, device=F.device) if rows is None else rows
    chunk = max(1, CHUNK_BYTES // (8 * N))
    idx = torch.empty(len(rows), k, dtype=torch.int64, device=F.device)
    val = torch.empty(len(rows), k, dtype=F.dtype, device=F.device)
    for s in range(0, len(rows), chunk):
        r = rows[s:s + chunk]
        block = F[r] @ F.T  # (c, N) kernel rows r
        block[torch.arange(len(r), device=F.device), r] = float("-inf")  # the reference's fill_diagonal_(-inf)
        val[s:s + chunk], idx[s:s + chunk] = torch.topk(block, k, dim=1)  # the reference's op
    return idx, val

# -----------------------------------------------------------------------------
# the fast path


@contextmanager
def ieee_float32():
    """float32 matmuls in IEEE float32 (no TF32, no bf16 passes): knn()'s error bound needs it."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def _candidates(X, m):
    """The m largest float32 kernel values of every row, self excluded, sorted, in (BLOCK, BLOCK) blocks.
    X (N, D) float32 -> val (N, m) float32, idx (N, m) int64. The kernel is symmetric: block (I, J),
    J >= I, is computed once and serves the rows of I (its rows) and of J (its columns, transposed).
    Every value dropped along the way is <= its row's final val[i, m - 1] (topk keeps the largest)."""
    N = X.shape[0]
    val = torch.full((N, m), float("-inf"), device=X.device)
    idx = torch.zeros(N, m, dtype=torch.int64, device=X.device)
    buf = torch.empty(2, min(N, BLOCK) ** 2, device=X.device)  # a block and its transpose, reused

    def merge(rows, S, offset):  # keep the m largest of the rows' candidates so far and of S (R, C)
        v, c = torch.topk(S, min(m, S.shape[1]), dim=1)
        v, order = torch.topk(torch.cat([val[rows], v], 1), m, dim=1)
        idx[rows] = torch.cat([idx[rows], c + offset], 1).gather(1, order)
        val[rows] = v

    for s in range(0, N, BLOCK):
        I = slice(s, min(s + BLOCK, N))
        for t in range(s, N, BLOCK):
            J = slice(t, min(t + BLOCK, N))
            ni, nj = I.stop - s, J.stop - t
            S = torch.matmul(X[I], X[J].T, out=buf[0, :ni * nj].view(ni, nj))  # (|I|, |J|) kernel block
            if t == s:
                S.fill_diagonal_(float("-inf"))  # self is not a neighbour
            merge(I, S, t)
            if t > s:
                merge(J, buf[1, :ni * nj].view(nj, ni).copy_(S.T), s)  # (|J|, |I|) for the rows of J
    return val, idx


def _gamma(n, u):
    """Higham's gamma_n = n u / (1 - n u): |fl(a . b) - a . b| <= gamma_n sum_i |a_i b_i| for a sum of
    n rounded products in any order, u the unit roundoff (2^-24 float32, 2^-53 float64)."""
    return n * u / (1 - n * u)


def _exact(F, rows, cols):
    """float64 kernel values of the rows' candidates: rows (R,), cols (R, w) -> (R, w) F_rows[r] . F_cols[r, c].
    The candidates' rows are gathered RECHECK_BYTES at a time into one reused buffer."""
    R, w = cols.shape
    chunk = max(1, RECHECK_BYTES // (8 * w * F.shape[1]))
    out = torch.empty(R, w, dtype=F.dtype, device=F.device)
    buf = torch.empty(min(R, chunk) * w, F.shape[1], dtype=F.dtype, device=F.device)
    for s in range(0, R, chunk):
        c = cols[s:s + chunk]
        g = torch.index_select(F, 0, c.reshape(-1), out=buf[:c.numel()]).view(*c.shape, -1)  # (r, w, D)
        out[s:s + chunk] = torch.bmm(g, F[rows[s:s + chunk], :, None]).squeeze(2)            # (r, w)
    return out


def knn(F, k):
    """The k nearest neighbours of every row under F F^T, self excluded: knn_float64's sets.
    F (N, D) float64 -> idx (N, k) int64, val (N, k) float64 with val[i, r] = F_i . F_idx[i, r].
    The float32 search runs on a = F * 2^-e, the largest row norm in [0.5, 1) (a power of two: the
    ranking is unchanged and the rescaling exact). For a row i, with w candidates re-checked in
    float64 (sorted x_1 >= ... >= x_w, w > k) and v = the float32 value of candidate w + 1 (or of
    candidate m when w = m), every column outside the w has float32 value <= v. The bounds (a factor 2
    over Higham's, which holds for any summation order, input rounding included):
        e32 = 2 gamma_(D+2)(2^-24) |a_i| max_j |a_j| + D 2^-120   (the last term: flushed subnormals)
        e64 = 2 gamma_(D+2)(2^-53) |a_i| max_j |a_j|
    The row is settled when x_k - 4 e64 > v + e32 (no outside column can reach the k-th) and
    x_k - x_k+1 > 4 e64 (the float64 path, off by e64 on each side, orders them the same): then the
    first k of the w are the float64 path's set, whatever its rounding. Rows not settled with w = k + 1
    are re-checked with w = m, then the rest go through knn_float64.
    Memory: F in float32 (N D 4 bytes), a block and its transpose, the (N, m) candidates."""
    N, D = F.shape
    m = min(k + EXTRA, N - 1)
    norm = torch.linalg.vector_norm(F, dim=1)  # (N,)
    top = norm.max().item()
    scale = 2.0 ** -math.frexp(top)[1] if 0 < top < math.inf else 1.0
    X = torch.empty(N, D, dtype=torch.float32, device=F.device)
    for s in range(0, N, BLOCK):
        X[s:s + BLOCK] = F[s:s + BLOCK] * scale  # rescaled, rounded to float32
    with ieee_float32():
        c_val, c_idx = _candidates(X, m)
    del X
    ab = norm * scale * (top * scale)  # (N,) |a_i| max_j |a_j| in the rescaled units
    e32 = 2 * _gamma(D + 2, 2.0**-24) * ab + D * 2.0**-120
    e64 = 2 * _gamma(D + 2, 2.0**-53) * ab
    idx = torch.empty(N, k, dtype=torch.int64, device=F.device)
    val = torch.empty(N, k, dtype=F.dtype, device=F.device)
    todo = torch.arange(N, device=F.device)
    for w in sorted({min(k + 1, m), m}):
        if len(todo) == 0:
            break
        x, order = torch.sort(_exact(F, todo, c_idx[todo, :w]), dim=1, descending=True)  # (R, w)
        x_k = x[:, k - 1] * scale**2  # in the rescaled units of v, e32, e64 (a power of two: exact)
        x_next = x[:, k] * scale**2 if w > k else torch.full_like(x_k, -math.inf)
        v = c_val[todo, min(w, m - 1)].double() if w < N - 1 else torch.full_like(x_k, -math.inf)
        ok = (x_k - 4 * e64[todo] > v + e32[todo]) & (x_k - x_next > 4 * e64[todo])
        idx[todo[ok]] = c_idx[todo[ok]].gather(1, order[ok, :k])
        val[todo[ok]] = x[ok, :k]
        todo = todo[~ok]
    if len(todo):
        idx[todo], val[todo] = knn_float64(F, k, todo)
    return idx, val
