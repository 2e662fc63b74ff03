"""
The cost of CKNNA (alignment_metrics.py + knn.py) against the reference algorithm with dense N x N arrays and
against the float64 search (knn_float64 on every row: the previous implementation), on random
features: A 2048-d (an embedding) vs B 10-d (a robot state), rows L2-normalised, k = 10.

    python bench.py --cknna [--cknna-sizes 2000 20000]

Each implementation runs in a fresh spawned process, so ru_maxrss is its own peak. For ours, the
child also measures this machine's float32 GEMM rate (one search block) just before, times the
search over A alone, and reports the fraction of that rate the search reaches.
"""
import json
import math
import resource
import sys
import time

import torch

import alignment_metrics as am
import knn

DENSE_MAX = 8000          # the dense N^3 reference runs only up to this N
FLOAT64_MAX = 20000       # the float64 search (the previous implementation) only up to this N
BENCH_DIMS = (2048, 10)   # d_a (embedding) and d_b (proprioceptive state)


def dense_cknna(A, B, topk):
    """The reference algorithm with dense (N, N) float32 arrays and full N^3 matmuls."""
    n = A.shape[0]
    K, L = A @ A.T, B @ B.T

    def mask(S):  # (N, N) 0/1: row i marks i's top-k columns, diagonal excluded
        S = S.clone().fill_diagonal_(float("-inf"))
        return torch.zeros_like(S).scatter_(1, torch.topk(S, topk, dim=1).indices, 1.0)

    def hsic(X, Y):
        X, Y = X.clone().fill_diagonal_(0), Y.clone().fill_diagonal_(0)
        h = (X * Y.T).sum() + X.sum() * Y.sum() / ((n - 1) * (n - 2)) - 2 * (X @ Y).sum() / (n - 2)
        return h / (n * (n - 3))

    mK, mL = mask(K), mask(L)
    m = mK * mL
    h_kl, h_kk, h_ll = hsic(m * K, m * L), hsic(mK * K, mK * K), hsic(mL * L, mL * L)
    return h_kl.item() / (torch.sqrt(h_kk * h_ll) + 1e-6).item()


def gemm_gflops(D, reps=3):
    """This machine's float32 GEMM rate, GFLOP/s: the best of `reps` (BLOCK, D) x (D, BLOCK) products,
    the shape of one block of the search."""
    X, Y = torch.randn(knn.BLOCK, D), torch.randn(knn.BLOCK, D)
    out = torch.empty(knn.BLOCK, knn.BLOCK)
    torch.matmul(X, Y.T, out=out)
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.matmul(X, Y.T, out=out)
        best = min(best, time.perf_counter() - t0)
    return 2 * knn.BLOCK**2 * D / best / 1e9


def half_kernel_flops(n, D):
    """FLOPs of the search's float32 GEMMs: the blocks (I, J), J >= I, of the N x N kernel, 2 |I| |J| D each:
    sum = D (N^2 + sum_I |I|^2)."""
    sizes = [min(knn.BLOCK, n - s) for s in range(0, n, knn.BLOCK)]
    return D * (n**2 + sum(b * b for b in sizes))


def _peak_mb():
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def _cpu_s():
    """CPU seconds of this process, all threads (user + system): less moved by other jobs than wall time."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _bench_case(impl, n, topk):
    """Runs in a fresh child: build the inputs, time one implementation, report peak RSS. For ours,
    also this machine's float32 GEMM rate just before, and the time of each kNN search."""
    g = torch.Generator().manual_seed(n)
    A = torch.nn.functional.normalize(torch.randn(n, BENCH_DIMS[0], generator=g), dim=1)
    B = torch.nn.functional.normalize(torch.randn(n, BENCH_DIMS[1], generator=g), dim=1)
    out, searches = {}, []
    if impl == "ours":
        out["gemm_gflops"] = gemm_gflops(BENCH_DIMS[0])

        def timed(F, k):
            t = time.perf_counter()
            r = knn.knn(F, k)
            searches.append(time.perf_counter() - t)
            return r
        am.knn = timed
    elif impl == "float64":
        am.knn = knn.knn_float64
    value, t0, c0 = None, time.perf_counter(), _cpu_s()
    if impl == "dense":
        value = dense_cknna(A, B, topk)
    elif impl != "inputs":
        value = am.cknna(A, B, topk)
    out.update(seconds=time.perf_counter() - t0, cpu_s=_cpu_s() - c0, peak_mb=_peak_mb(), cknna=value)
    if searches:  # A's search: its GEMM rate and the fraction of the machine's
        out.update(search_a_s=searches[0], search_b_s=searches[1],
                   search_gflops=half_kernel_flops(n, BENCH_DIMS[0]) / searches[0] / 1e9)
        out["gemm_fraction"] = out["search_gflops"] / out["gemm_gflops"]
    return out


def _in_child(*args):
    import concurrent.futures as cf
    import multiprocessing as mp
    with cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as ex:
        try:
            return ex.submit(_bench_case, *args).result()
        except Exception as e:  # e.g. the child was killed for memory
            return dict(seconds=None, peak_mb=None, cknna=None, error=repr(e))


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def bench_cknna(sizes, topk, machine):
    """The table for N in sizes, each implementation in its own fresh process; then one JSON line each."""
    print(f"machine: {machine}; A {BENCH_DIMS[0]}-d vs B {BENCH_DIMS[1]}-d, random, rows L2-normalised, "
          f"topk={topk}; dense = reference algorithm in float32, float64 = float64 search (the previous "
          f"implementation), ours = float32 search + float64 re-check (knn.py)")
    head = (f"{'N':>7} {'impl':>7} {'time s':>8} {'cpu s':>8} {'peak MB':>8} {'net MB':>7} {'cknna':>11} {'|diff|':>8} {'vs':>7}"
            f" {'A s':>7} {'GFLOP/s':>8} {'GEMM':>6} {'frac':>5}")
    print(head + "\n" + "-" * len(head), flush=True)
    records = []
    for n in sizes:
        base = _in_child("inputs", n, topk)["peak_mb"]  # torch + the inputs, nothing else
        impls = (["dense"] if n <= DENSE_MAX else []) + (["float64"] if n <= FLOAT64_MAX else []) + ["ours"]
        results = {impl: _in_child(impl, n, topk) for impl in impls}
        ref = next((i for i in impls[:-1] if results[i].get("cknna") is not None), None)  # dense, else float64
        for impl, r in results.items():
            r.update(n=n, impl=impl, inputs_mb=base, net_mb=None if r["peak_mb"] is None else r["peak_mb"] - base)
            if impl != ref and ref is not None and r["cknna"] is not None:
                r.update(abs_diff=abs(r["cknna"] - results[ref]["cknna"]), diff_vs=ref)
            if r.get("seconds") and results.get("float64", {}).get("seconds") and impl != "float64":
                r["speedup_vs_float64"] = results["float64"]["seconds"] / r["seconds"]
            print(f"{n:>7} {impl:>7} {_fmt(r['seconds'], '8.2f')} {_fmt(r.get('cpu_s'), '8.2f')} {_fmt(r['peak_mb'], '8.0f')} "
                  f"{_fmt(r['net_mb'], '7.0f')} {_fmt(r['cknna'], '11.8f')} {_fmt(r.get('abs_diff'), '8.1e')} "
                  f"{r.get('diff_vs', '-'):>7} {_fmt(r.get('search_a_s'), '7.2f')} {_fmt(r.get('search_gflops'), '8.1f')} "
                  f"{_fmt(r.get('gemm_gflops'), '6.1f')} {_fmt(r.get('gemm_fraction'), '5.2f')}"
                  + (f"  {r['error']}" if "error" in r else ""), flush=True)
            records.append(r)
    print("time s = wall; cpu s = the child's CPU time, all threads; peak MB = ru_maxrss of the child; net MB = peak minus a child that only builds the inputs; "
          "|diff| = |cknna - the dense (else float64) value|; A s = ours' search over the 2048-d side; "
          "GFLOP/s = its GEMM FLOPs (half the kernel) per second; GEMM = this machine's float32 GEMM "
          "rate (GFLOP/s, measured just before); frac = the fraction of it the search reaches")
    for r in records:
        print(json.dumps(r))
