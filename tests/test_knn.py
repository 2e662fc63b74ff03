"""Tests for knn.py: the fast search (float32 candidates, float64 re-check) returns the float64
path's neighbour sets exactly: random data, ties, duplicate rows, k above the number of distinct
points, rows whose float32 and float64 orders differ.  python -m pytest -q tests/test_knn.py"""
import numpy as np
import pytest
import torch

import knn as K


def unit_rows(x):
    return torch.nn.functional.normalize(x, dim=1)


def check_same(F, k):
    """knn(F, k) against knn_float64(F, k): the same set in every row, values to float64 rounding.
    Returns the number of rows knn sent to knn_float64 (the fallback)."""
    want_idx, want_val = K.knn_float64(F, k)
    redo = []
    real = K.knn_float64

    def spy(F, k, rows=None):
        redo.append(len(rows))
        return real(F, k, rows)

    K.knn_float64 = spy
    try:
        idx, val = K.knn(F, k)
    finally:
        K.knn_float64 = real
    assert idx.shape == (F.shape[0], k) and val.dtype == torch.float64
    assert torch.equal(idx.sort(1).values, want_idx.sort(1).values)
    tol = 1e-12 * F.norm(dim=1).max().item() ** 2  # float64 rounding of a dot product, with room
    assert torch.allclose(torch.sort(val, 1).values, torch.sort(want_val, 1).values, rtol=0, atol=tol)
    assert torch.allclose(val, (F[idx] * F[:, None]).sum(-1), rtol=0, atol=tol)  # val[i, r] = F_i . F_idx
    return sum(redo)


@pytest.mark.parametrize("N, D, k, block", [(300, 32, 10, 4096), (1000, 2048, 10, 256), (777, 10, 5, 100),
                                             (500, 64, 40, 128), (40, 8, 39, 16)])
def test_random_rows_need_no_fallback(monkeypatch, N, D, k, block):
    # several blocks (block < N, a ragged last one) exercise the symmetric half-kernel loop;
    # k = N - 1 takes every other row
    monkeypatch.setattr(K, "BLOCK", block)
    F = unit_rows(torch.randn(N, D, generator=torch.Generator().manual_seed(N), dtype=torch.float64))
    assert check_same(F, k) == 0  # every row settled by the float32 search and the re-check


def test_unnormalised_and_float32_inputs():
    g = torch.Generator().manual_seed(1)
    F = torch.randn(600, 48, generator=g, dtype=torch.float64) * torch.rand(600, 1, generator=g, dtype=torch.float64) * 1e6
    assert check_same(F, 10) == 0  # rescaled by a power of two, norms spread over 6 decades
    assert check_same(F.float().double() * 1e-30, 10) == 0


def test_duplicate_rows_break_ties_as_the_float64_path():
    # every point two or three times: the k-th neighbour is often one of a tied pair, decided
    # by torch.topk over the float64 row (the fallback), as in the float64 path
    g = torch.Generator().manual_seed(2)
    base = unit_rows(torch.randn(400, 16, generator=g, dtype=torch.float64))
    F = base[torch.randint(0, 400, (1000,), generator=g)]
    assert check_same(F, 10) > 0
    assert check_same(torch.cat([base, base]), 10) > 0


def test_k_larger_than_the_distinct_points(monkeypatch):
    # 3 distinct points, each 10 times: 12 neighbours include whole tied groups
    monkeypatch.setattr(K, "BLOCK", 8)
    base = unit_rows(torch.randn(3, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    F = base.repeat(10, 1)  # (30, 5)
    assert check_same(F, 12) == 30  # no row can be settled: each goes through knn_float64
    assert check_same(torch.zeros(20, 4, dtype=torch.float64), 5) == 20  # all-zero rows: everything ties


def test_rows_whose_float32_and_float64_orders_differ():
    # groups of near-duplicates (1 to ~8 copies of a point) 1e-10 apart: float32 cannot order a
    # group's members (its error is ~1e-7 here), float64 can. The float32 top k picks another set in
    # many rows; knn still returns the float64 sets, most rows settled by the re-checks
    g = torch.Generator().manual_seed(4)
    base = unit_rows(torch.randn(200, 32, generator=g, dtype=torch.float64))
    F = base[torch.randint(0, 200, (600,), generator=g)] + 1e-10 * torch.randn(600, 32, generator=g, dtype=torch.float64)
    S32 = (F.float() @ F.float().T).fill_diagonal_(float("-inf"))
    for k in (9, 10):
        want = K.knn_float64(F, k)[0].sort(1).values
        naive = torch.topk(S32, k, dim=1).indices.sort(1).values
        assert (naive != want).any(1).sum() > 50  # float32 alone gets many rows wrong
        assert check_same(F, k) < 300  # and the fast path settles most rows


def test_float32_error_bound_holds():
    # the bound knn relies on: |fl32(a . b) - a . b| <= gamma_(D+2) |a| |b| (Higham), checked on
    # every pair of a float64 matrix with a large D; measured errors are far below it
    g = torch.Generator().manual_seed(5)
    for D in (10, 2048):
        a = unit_rows(torch.randn(300, D, generator=g, dtype=torch.float64)) * 0.75
        with K.ieee_float32():
            err = (a.float() @ a.float().T).double() - a @ a.T
        bound = K._gamma(D + 2, 2.0**-24) * 0.75 * 0.75
        assert err.abs().max() < bound


def test_ieee_float32_restores_the_setting():
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        with K.ieee_float32():
            assert torch.get_float32_matmul_precision() == "highest"
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(before)


def test_cknna_on_ties_equals_the_float64_path(monkeypatch):
    # the whole metric, through knn and through knn_float64 only: equal to float64 rounding
    import alignment_metrics as ck   # the module whose knn the metric calls
    rng = np.random.default_rng(6)
    z = rng.standard_normal((150, 10))
    A = z @ rng.standard_normal((10, 64)) + 0.5 * rng.standard_normal((150, 64))
    A, z = np.concatenate([A, A[:80]]), np.concatenate([z, z[:80]])  # 80 duplicated samples
    B = np.round(z, 1)  # and a coarse state with many ties
    fast = ck.cknna(A, B, 10), ck.mutual_knn(A, B, 10)
    monkeypatch.setattr(ck, "knn", lambda F, k: K.knn_float64(F, k))
    slow = ck.cknna(A, B, 10), ck.mutual_knn(A, B, 10)
    assert abs(fast[0] - slow[0]) < 1e-12 and fast[1] == slow[1]
