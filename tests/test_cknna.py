"""Tests for cknna.py: parity with a dense float64 implementation written here from
shared/notes/cknna.md, invariants, errors, plots.  python -m pytest tests/test_cknna.py -q"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import cknna as ck  # noqa: E402


# --- the reference algorithm, dense N x N, numpy float64 (cknna.md steps 1-5) ---

def dense_masks(A, B, k):
    K, L = A @ A.T, B @ B.T  # 1. linear kernels, uncentred

    def mask(S):  # 2. each row's top-k columns, diagonal excluded
        S = S.copy()
        np.fill_diagonal(S, -np.inf)
        nn = np.argsort(-S, axis=1, kind="stable")[:, :k]
        M = np.zeros_like(S)
        np.put_along_axis(M, nn, 1.0, axis=1)
        return M

    return K, L, mask(K), mask(L)


def dense_hsic(X, Y):  # 4. unbiased HSIC, Song et al. 2012
    n = X.shape[0]
    X, Y = X.copy(), Y.copy()
    np.fill_diagonal(X, 0.0)
    np.fill_diagonal(Y, 0.0)
    h = np.sum(X * Y.T) + X.sum() * Y.sum() / ((n - 1) * (n - 2)) - 2 * np.sum(X @ Y) / (n - 2)
    return h / (n * (n - 3))


def dense_cknna(A, B, k):
    K, L, mK, mL = dense_masks(np.asarray(A, np.float64), np.asarray(B, np.float64), k)
    m = mK * mL  # 3. joint mask for the cross term
    h_kl = dense_hsic(m * K, m * L)
    return h_kl / (np.sqrt(dense_hsic(mK * K, mK * K) * dense_hsic(mL * L, mL * L)) + 1e-6)  # 5.


def dense_mutual_knn(A, B, k):
    _, _, mK, mL = dense_masks(np.asarray(A, np.float64), np.asarray(B, np.float64), k)
    return (mK * mL).sum(1).mean() / k


def make_pair(n, seed, normalise):
    """A (n, 32) with cluster structure, B (n, 6) partly a linear function of A: CKNNA well
    inside (0, 1), kernels with both signs, no ties."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, 32)) + 2.0 * rng.standard_normal((5, 32))[rng.integers(0, 5, n)]
    B = A[:, :8] @ rng.standard_normal((8, 6)) + 2.0 * rng.standard_normal((n, 6)) + 0.5
    if normalise:
        A /= np.linalg.norm(A, axis=1, keepdims=True)
        B /= np.linalg.norm(B, axis=1, keepdims=True)
    return A, B


def latent_pair(n, d_a, seed):
    """A = noisy linear image in d_a dims of a 10-d latent z, B = z; rows L2-normalised."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 10))
    A = z @ rng.standard_normal((10, d_a)) + 0.5 * rng.standard_normal((n, d_a))
    return unit_rows(A), unit_rows(z)


def unit_rows(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# --- parity ---

def check_parity(A, B, k, to_torch=False):
    want, want_ba, want_m = dense_cknna(A, B, k), dense_cknna(B, A, k), dense_mutual_knn(A, B, k)
    if to_torch:
        A, B = torch.from_numpy(A), torch.from_numpy(B)
    got = ck.cknna(A, B, k)
    assert isinstance(got, float)
    assert abs(got - want) < 1e-6, (got, want)
    assert abs(ck.cknna(B, A, k) - want_ba) < 1e-6  # argument order matters and is kept
    assert abs(ck.mutual_knn(A, B, k) - want_m) < 1e-6


@pytest.mark.parametrize("n", [50, 200, 500])
@pytest.mark.parametrize("k", [2, 5, 10, 40])
@pytest.mark.parametrize("normalise", [False, True])
def test_parity_with_dense(n, k, normalise):
    A, B = make_pair(n, seed=n + k, normalise=normalise)
    check_parity(A, B, k)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("normalise", [False, True])
def test_parity_torch_inputs(dtype, normalise):
    # float32 inputs: the dense side sees the same float32 values, cast to float64
    A, B = make_pair(300, seed=7, normalise=normalise)
    check_parity(A.astype(dtype), B.astype(dtype), 10, to_torch=True)


def test_parity_across_chunks(monkeypatch):
    # 37-row chunks and 64-row blocks (not dividing N = 300): rows and diagonal offsets cross
    # chunk and block borders in the float64 path and in the float32 search
    import knn
    monkeypatch.setattr(knn, "CHUNK_BYTES", 8 * 300 * 37)
    monkeypatch.setattr(knn, "BLOCK", 64)
    A, B = make_pair(300, seed=1, normalise=True)
    assert abs(ck.cknna(A, B, 10) - dense_cknna(A, B, 10)) < 1e-6
    assert abs(ck.mutual_knn(A, B, 10) - dense_mutual_knn(A, B, 10)) < 1e-6


def test_asymmetric_term_is_exercised():
    # sum(X @ Y) = colsum(X) . rowsum(Y) is not symmetric in X, Y: cknna(A, B) != cknna(B, A)
    A, B = make_pair(200, seed=3, normalise=True)
    assert abs(ck.cknna(A, B, 10) - ck.cknna(B, A, 10)) > 1e-9


# --- invariants ---

def test_self_alignment_near_one():
    # cknna(X, X) = h / (sqrt(h * h) + 1e-6) = h / (h + 1e-6) exactly, h = hsic(Kk, Kk) > 0;
    # the 1e-6 is not negligible (h is of order k / N), so compare with that exact value
    rng = np.random.default_rng(0)
    X = unit_rows(rng.standard_normal((400, 16)))
    _, _, mK, _ = dense_masks(X, X, 10)
    K = X @ X.T
    h = dense_hsic(mK * K, mK * K)
    got = ck.cknna(X, X, 10)
    assert abs(got - h / (h + 1e-6)) < 1e-9
    assert 0.99 < got < 1.0


def test_rotation_invariance():
    rng = np.random.default_rng(1)
    A, B = latent_pair(300, 64, seed=2)
    Qa, _ = np.linalg.qr(rng.standard_normal((A.shape[1], A.shape[1])))  # random orthogonal
    Qb, _ = np.linalg.qr(rng.standard_normal((B.shape[1], B.shape[1])))
    base = ck.cknna(A, B, 10)
    assert base > 0.5  # non-trivial alignment, so the invariance check means something
    assert abs(ck.cknna(A @ Qa, B, 10) - base) < 1e-9
    assert abs(ck.cknna(A, B @ Qb, 10) - base) < 1e-9
    assert abs(ck.mutual_knn(A @ Qa, B @ Qb, 10) - ck.mutual_knn(A, B, 10)) < 1e-12


def test_independent_features_near_zero():
    # 256-d vs 10-d random and independent: the shared neighbours are chance only
    g = torch.Generator().manual_seed(0)
    A = torch.nn.functional.normalize(torch.randn(1500, 256, generator=g), dim=1)
    B = torch.nn.functional.normalize(torch.randn(1500, 10, generator=g), dim=1)
    assert abs(ck.cknna(A, B, 10)) < 0.1
    assert ck.mutual_knn(A, B, 10) < 0.05  # chance level is k / (N - 1) < 0.01
    # and a dependent pair (both views of one 10-d latent) scores clearly higher
    A, B = latent_pair(1500, 256, seed=0)
    assert ck.cknna(A, B, 10) > 0.5


def test_ties_give_finite_scores():
    # duplicated rows tie exactly; which tied neighbour wins is torch.topk's choice (the
    # reference's op too), so only check that the score is a sane number
    A, B = latent_pair(100, 16, seed=4)
    A, B = np.concatenate([A, A]), np.concatenate([B, B])  # every row twice
    v = ck.cknna(A, B, 10)
    assert np.isfinite(v) and 0.3 < v < 1.0
    assert ck.mutual_knn(A, B, 10) >= 0.1  # the duplicate is a shared neighbour in both


# --- errors ---

def test_too_few_samples():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"at least max\(topk \+ 1, 4\) = 11 samples, got N = 10"):
        ck.cknna(rng.standard_normal((10, 4)), rng.standard_normal((10, 3)), 10)
    with pytest.raises(ValueError, match=r"= 4 samples, got N = 3"):
        ck.cknna(rng.standard_normal((3, 4)), rng.standard_normal((3, 3)), 2)
    with pytest.raises(ValueError, match="smaller topk"):
        ck.mutual_knn(rng.standard_normal((5, 4)), rng.standard_normal((5, 3)), 5)
    with pytest.raises(ValueError, match="topk must be an integer >= 2"):
        ck.cknna(rng.standard_normal((20, 4)), rng.standard_normal((20, 3)), 1)


def test_mismatched_rows_and_bad_inputs():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="feats_a has 20 rows but feats_b has 19: pass the same"):
        ck.cknna(rng.standard_normal((20, 4)), rng.standard_normal((19, 3)))
    with pytest.raises(ValueError, match="feats_a has 19 rows but feats_b has 20"):
        ck.mutual_knn(torch.randn(19, 4), torch.randn(20, 3))
    with pytest.raises(ValueError, match="must be 2-D"):
        ck.cknna(rng.standard_normal(20), rng.standard_normal((20, 3)))
    bad = rng.standard_normal((20, 4))
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="feats_a contains NaN or inf"):
        ck.cknna(bad, rng.standard_normal((20, 3)))


# --- plots and the command ---

def is_png(path):
    data = Path(path).read_bytes()
    return len(data) > 5000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_write_png(tmp_path):
    scores = {"h (adapter)": {"baseline": 0.12, "rs-cl": 0.31},
              "w (pooled)": {"baseline": 0.08, "rs-cl": 0.27}}
    ck.plot_alignment(scores, tmp_path / "alignment.png")
    assert is_png(tmp_path / "alignment.png")
    rng = np.random.default_rng(0)
    h = rng.standard_normal((300, 20))
    colour_by = {"appearance": rng.integers(0, 4, 300), "gripper": rng.random(300)}
    ck.plot_projection(torch.from_numpy(h), colour_by, tmp_path / "pca.png", title="demo")
    assert is_png(tmp_path / "pca.png")
    xy, var = ck.pca_2d(h)
    assert xy.shape == (300, 2) and var[0] >= var[1] > 0


def test_bench_smoke():
    out = subprocess.run([sys.executable, str(ROOT / "bench.py"), "--cknna", "--cknna-sizes", "300"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
    assert [r["impl"] for r in rows] == ["dense", "float64", "ours"]
    assert rows[1]["abs_diff"] < 1e-5 and rows[2]["abs_diff"] < 1e-5  # float32 dense vs the float64 sums
    assert all(r["peak_mb"] > 0 and r["seconds"] >= 0 for r in rows)
    ours = rows[2]
    assert ours["gemm_gflops"] > 0 and ours["search_a_s"] > 0 and 0 < ours["gemm_fraction"] == pytest.approx(
        ours["search_gflops"] / ours["gemm_gflops"])


def test_cknna_command_on_two_checkpoints(synthetic, tmp_path):
    """`python cknna.py A B --data F` on a baseline and an RS-CL checkpoint writes both figures."""
    import json
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    fast = ["--batch-size", "4", "--max-iters", "2", "--eval-every", "100", "--log-every", "1", "--data", synthetic]
    for name, extra in (("base", []), ("rscl", ["--rscl"])):
        r = subprocess.run([sys.executable, "train.py", *fast, *extra, "--out", str(tmp_path / name)], cwd=root,
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    out = tmp_path / "fig"
    r = subprocess.run([sys.executable, "cknna.py", str(tmp_path / "base" / "ckpt.pt"), str(tmp_path / "rscl" / "ckpt.pt"),
                        "--data", synthetic, "--n", "60", "--split", "all", "--out", str(out)], cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for png in ("alignment.png", "projection_base.png", "projection_rscl.png"):
        assert (out / png).stat().st_size > 10_000
    rows = json.load(open(out / "scores.json"))["rows"]
    assert {(x["run"], x["representation"]) for x in rows} == {(r, k) for r in ("base", "rscl") for k in ("backbone", "h", "z")}
    assert all(-1 <= x["cknna"] <= 1 and x["n"] == 60 for x in rows)
    # a data file without the proprio keys: one clear line, exit 2
    r = subprocess.run([sys.executable, "cknna.py", str(tmp_path / "base" / "ckpt.pt"), "--data", synthetic,
                        "--proprio-keys", "ee_pos,ee_quat,grip", "--out", str(tmp_path / "fig2")], cwd=root,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "ee_pos" in r.stderr
    assert not (tmp_path / "fig2").exists() and (out / "scores.json").exists()   # a failed analysis leaves nothing
