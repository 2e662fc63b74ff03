"""
The alignment metrics: CKNNA (Centered Kernel Nearest-Neighbour Alignment, Huh et al. 2024) in O(N k) memory, and
mutual kNN; and the pooled representations of a policy they score (backbone features, h, z, against q).

CKNNA reproduces AlignmentMetrics.cknna of minyoungg/platonic-rep (unbiased=True) number for number, without its
~12 dense N x N arrays and its N^3 matmul: every HSIC term only needs the k nearest neighbours of each row, so the
score is computed from kNN index lists (knn.py; see shared/notes/cknna.md). The commands that use it:

    python cknna.py CKPT [CKPT ...] --data FILE --n 4415 --topk 10 --out out/cknna
    python cknna.py --layers --data FILE [CKPT ...]  # every layer against state and actions (alignment.py)
    python bench.py --cknna                          # its cost against the dense N^3 reference

Notation (cknna.md): A (N, d_a), B (N, d_b) features, row i = sample i; K = A A^T, L = B B^T;
nnK(i) = the k columns j != i with the largest K[i, j] (torch.topk); mask_K[i, j] = 1 iff
j in nnK(i) (rows, not symmetric); Kk = mask_K * K, Ll = mask_L * L; m = mask_K * mask_L,
Km = m * K, Lm = m * L.  A sparse matrix here is a pair (key, val): key = i * N + j (int64,
sorted), val = X[i, j], listing only the entries of its support.
"""
import os

import torch

from knn import knn

# -----------------------------------------------------------------------------
# helpers

def _as_float64(x, name, device=None):
    """numpy array or torch tensor (N, D), any dtype -> float64 tensor (N, D) on `device`."""
    x = torch.as_tensor(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N samples, D features), got shape {tuple(x.shape)}")
    x = x.to(device=device if device is not None else x.device, dtype=torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf: clean or drop those samples first")
    return x


def _prepare(feats_a, feats_b, topk, min_topk, min_n):
    A = _as_float64(feats_a, "feats_a")
    B = _as_float64(feats_b, "feats_b", device=A.device)
    n = A.shape[0]
    if B.shape[0] != n:
        raise ValueError(f"feats_a has {n} rows but feats_b has {B.shape[0]}: "
                         "pass the same samples, in the same order, to both")
    if isinstance(topk, bool) or int(topk) != topk or topk < min_topk:
        raise ValueError(f"topk must be an integer >= {min_topk}, got {topk!r}")
    topk = int(topk)
    need = max(topk + 1, min_n)
    if n < need:
        raise ValueError(f"need at least max(topk + 1, {min_n}) = {need} samples, got N = {n}: "
                         "pass more samples or a smaller topk")
    return A, B, topk


def _sparse(idx, val):
    """kNN lists (N, k) -> the masked kernel mask * K as (key, val), key = i * N + j, sorted."""
    N = idx.shape[0]
    rows = torch.arange(N, device=idx.device).unsqueeze(1)  # (N, 1)
    key = (rows * N + idx).reshape(-1)  # (N k,)
    order = torch.argsort(key)
    return key[order], val.reshape(-1)[order]


def _find(query, keys):
    """For each query key: (is it in the sorted `keys`, its position there)."""
    if keys.numel() == 0:
        return torch.zeros_like(query, dtype=torch.bool), torch.zeros_like(query)
    pos = torch.searchsorted(keys, query).clamp_(max=keys.numel() - 1)
    return keys[pos] == query, pos


# -----------------------------------------------------------------------------
# --- CKNNA: unbiased HSIC from kNN lists ---

def hsic_sparse(n, kx, vx, ky, vy):
    """Unbiased HSIC (Song et al. 2012) of two N x N matrices with zero diagonal, given sparse:
    hsic(X, Y) = [ sum(X * Y^T) + sum(X) sum(Y) / ((n-1)(n-2)) - 2 sum(X @ Y) / (n-2) ] / (n(n-3))
    kx, ky (nnz,) int64 sorted keys i * n + j; vx, vy (nnz,) float64 values. Returns a 0-d tensor."""
    # sum(X * Y^T) = sum_{i,j} X[i, j] Y[j, i]: look up the transposed key j * n + i of every
    # X entry among Y's keys (only pairs in both supports, in opposite directions, contribute)
    i, j = kx // n, kx % n
    hit, pos = _find(j * n + i, ky)
    trace_term = (vx[hit] * vy[pos[hit]]).sum()
    # sum(X @ Y) = sum_{i,l} sum_j X[i, j] Y[j, l] = sum_j colsum_X[j] * rowsum_Y[j]
    colsum_x = torch.zeros(n, dtype=vx.dtype, device=vx.device).index_add_(0, j, vx)
    rowsum_y = torch.zeros(n, dtype=vy.dtype, device=vy.device).index_add_(0, ky // n, vy)
    xy_term = (colsum_x * rowsum_y).sum()
    h = trace_term + vx.sum() * vy.sum() / ((n - 1) * (n - 2)) - 2 * xy_term / (n - 2)
    return h / (n * (n - 3))


@torch.no_grad()
def cknna(feats_a, feats_b, topk=10):
    """CKNNA of platonic-rep's AlignmentMetrics.cknna(A, B, topk) with unbiased=True.
    feats_a (N, d_a), feats_b (N, d_b): numpy arrays or torch tensors (any float dtype, any
    device; B is moved to A's device). No normalisation inside: L2-normalise rows first if
    wanted. Argument order matters (~1e-3 relative): embedding first, proprio second.
    The neighbour sets are those of a float64 torch.topk over each kernel row (knn.py: a float32
    search, re-checked in float64, proved or recomputed), the kernel values and sums are float64,
    so TF32 never applies. Ties (duplicate rows) are broken by torch.topk on the float64 row, as
    in the reference; near-tied neighbours can differ from a float32 dense run.
    Returns a python float. Memory O(N k) beyond the inputs, their float32 copy and one block."""
    A, B, k = _prepare(feats_a, feats_b, topk, min_topk=2, min_n=4)
    n = A.shape[0]
    kK, vK = _sparse(*knn(A, k))  # Kk = mask_K * K: N k entries
    kL, vL = _sparse(*knn(B, k))  # Ll = mask_L * L
    # joint mask m = mask_K * mask_L: the entries of Kk whose (i, j) is also in Ll's support
    hit, pos = _find(kK, kL)
    kM, vKm, vLm = kK[hit], vK[hit], vL[pos[hit]]  # Km and Lm share the support m (sorted)
    h_kl = hsic_sparse(n, kM, vKm, kM, vLm)  # hsic(Km, Lm)
    h_kk = hsic_sparse(n, kK, vK, kK, vK)  # hsic(Kk, Kk): the reference's similarity(K, K)
    h_ll = hsic_sparse(n, kL, vL, kL, vL)  # hsic(Ll, Ll)
    # the + 1e-6 is the reference's; a negative h_kk * h_ll gives NaN there and here
    return (h_kl / (torch.sqrt(h_kk * h_ll) + 1e-6)).item()


@torch.no_grad()
def mutual_knn(feats_a, feats_b, topk=10):
    """Mutual kNN accuracy: mean over i of |nnK(i) & nnL(i)| / k, in [0, 1].
    feats_a (N, d_a), feats_b (N, d_b), as in cknna (float64, self excluded). Returns a float.
    The reference ranks with argsort (diagonal -1e8) instead of topk: same sets up to ties."""
    A, B, k = _prepare(feats_a, feats_b, topk, min_topk=1, min_n=2)
    kK, _ = _sparse(*knn(A, k))
    kL, _ = _sparse(*knn(B, k))
    hit, _ = _find(kK, kL)  # |mask_K * mask_L| summed over all rows
    return hit.sum().item() / (A.shape[0] * k)


# -----------------------------------------------------------------------------
# what the metrics score: a policy's pooled representations

def pooled_h_cknna(policy, batches, topk=10):
    """CKNNA of the adapter's h, mean-pooled over real tokens, against q, from batches of the policy's inputs
    (feats, mask, views, q, A, teacher, pixels) (train.py --cknna-every). NaN with topk or fewer samples."""
    from model import masked_mean
    hs, qs = [], []
    for feats, mask, views, q, _, _, pixels in batches:
        feats, mask, _ = policy.inputs(feats, mask, views, pixels)                     # E' too, if the policy has one
        h, _ = policy.adapter(feats, mask)                                            # (B, N, D)
        hs.append(masked_mean(h.float(), mask).cpu())                                 # (B, D)
        qs.append(q.float().cpu())
    h, q = torch.cat(hs), torch.cat(qs)
    h, q = h / h.norm(dim=1, keepdim=True), q / q.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return cknna(h, q, topk=topk) if len(h) > topk else float("nan")


@torch.no_grad()
def extract(policy, ds, idx, batch_size=32):
    """Pooled representations of samples idx of ds, each row L2-normalised, and q.
    Pooling: the mean over real (non-padding) tokens, for the backbone features and for h; z is
    one vector per sample already. q: min-max scaled with the checkpoint's statistics, then
    L2-normalised like the embeddings (as in the paper's analysis)."""
    from data import collate
    from model import masked_mean
    out = {"backbone": [], "h": [], "z": [], "q": []}
    for s in range(0, len(idx), batch_size):
        b = collate([ds[i] for i in idx[s:s + batch_size]])
        c = policy.encode(b["images"], b["instructions"])
        out["backbone"].append(masked_mean(c["feats"].float(), c["mask"]))  # (B, D)
        out["h"].append(masked_mean(c["h"].float(), c["mask"]))             # (B, D)
        out["z"].append(c["z"].float())                                     # (B, 128)
        out["q"].append(policy.normalize(b["q"].to(c["mask"].device), "q").float())  # (B, 10) in [-1, 1]
    return {k: torch.nn.functional.normalize(torch.cat(v).cpu(), dim=1) for k, v in out.items()}


def run_names(paths):
    """A distinct name per checkpoint (the plot's bars are keyed by it): runs/main-rscl/ckpt.pt -> main-rscl;
    two in one folder -> main-rscl/ckpt, main-rscl/ckpt_500; two folders of one name -> a/run/ckpt, b/run/ckpt."""
    real = [os.path.realpath(p) for p in paths]
    twice = [p for p, r in zip(paths, real) if real.count(r) > 1]
    if twice:
        raise ValueError(f"checkpoint {twice[0]} is given twice: name each checkpoint once")
    parts = [os.path.splitext(r)[0].split(os.sep) for r in real]          # [..., 'main-rscl', 'ckpt']
    for d in range(1, max(map(len, parts)) + 1):   # the folder's name, else more of the path until they differ
        names = [p[-2] if d == 1 else "/".join(p[-d:]) for p in parts]
        if len(set(names)) == len(names):
            return names
