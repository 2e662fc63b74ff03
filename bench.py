"""
Speed of the training step and of inference, side by side in one run.

    python bench.py                                                      # main.sh's CPU configuration
    python bench.py --backbone qwen2.5-vl-3b --size paper --random-init  # the paper's scale, one GPU
    python bench.py --flops-only --backbone qwen2.5-vl-3b --size paper --random-init --image-size 224

The default case is main.sh's: the pretrained dinov2-s, 2 views of 128 px pooled 2 x 2 (--token-pool 2),
no adapter dropout, size tiny, batch 32. With another --backbone the defaults are 3 views, no pooling
and the model's adapter dropout.

Cases: the training step with the backbone run live, for the baseline and for --rscl, and the same
two from cached features (features.py: the backbone is not run, its 16-bit features are read and
moved to the device); and the baseline with a trainable copy of the vision encoder, alone (--train-vision)
or beside the frozen one (--dual-encoder), which train live (vision.py); and --align (its teacher the backbone,
paired with the baseline from the cache). The step runs in train.py's precision: bf16 autocast on CUDA and on
CPUs with native bf16 matmuls (backbone.cpu_bf16), else float32. Each case runs in a fresh process, so peak
memory is its own. Timing excludes
warm-up and synchronises the device. FLOPs are counted by torch's FlopCounterMode on one step
(matmuls and attention, forward and backward), not estimated. One JSON line per case, then a summary:
the RS-CL / baseline step-time ratio and the cache / live speed-up. Also the latency of predicting one
action chunk (K Euler steps, the condition computed once).

    python bench.py --cknna      # CKNNA: dense N^3 reference, the float64 search, ours (knn.py); time,
                                 # memory, agreement, and the fraction of the float32 GEMM rate reached
                                 # (bench_cknna.py)
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch

from backbone import BACKBONES, Backbone, cpu_bf16
from align import teacher_targets
from bench_cknna import bench_cknna
from model import SIZES, Policy, PolicyConfig, make_config

CKNNA_SIZES = [2000, 4415, 8000, 20000, 100000]
MAIN_SH = dict(backbone="dinov2-s", views=2, token_pool=2, adapter_dropout=0.0)   # main.sh's CPU configuration
OTHERS = dict(views=3, token_pool=1, adapter_dropout=PolicyConfig.adapter_dropout)  # with any other --backbone

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.error = lambda msg: sys.exit(f"error: {msg}: see python bench.py --help")   # argparse's errors in one line
p.add_argument("--backbone", default=None, help=f"one of {', '.join(BACKBONES)} (default: dinov2-s, as main.sh)")
p.add_argument("--backbone-path", default="")
p.add_argument("--random-init", action="store_true", help="the real architecture with random weights (no download)")
p.add_argument("--size", default="tiny", help=f"one of {', '.join(SIZES)}")
p.add_argument("--batch-size", type=int, default=32)
p.add_argument("--image-size", type=int, default=128)
p.add_argument("--views", type=int, default=None, help="camera views (default: 2 as main.sh, 3 with --backbone)")
p.add_argument("--token-pool", type=int, default=None, help="dinov2-s: pool p x p patch tokens (default: 2 as main.sh)")
p.add_argument("--adapter-dropout", type=float, default=None, help="default: 0.0 as main.sh, the model's with --backbone")
p.add_argument("--warmup", type=int, default=3)
p.add_argument("--iters", type=int, default=10)
p.add_argument("--paired-iters", type=int, default=40,
               help="steps of each kind in the paired cases (a ratio of two medians: 10 gave 1.13-1.26 here, 40 1.16-1.18)")
p.add_argument("--device", default="auto")
p.add_argument("--compile", action="store_true")
p.add_argument("--flops-only", action="store_true",
               help="count FLOPs per sample without timing: backbone forward on the CPU (random weights), "
                    "adapter + DiT on the meta device (the CPU at size tiny); for machines without the GPU the size needs")
p.add_argument("--cknna", action="store_true", help="time and memory of cknna.py against a dense N^3 CKNNA")
p.add_argument("--cknna-sizes", type=int, nargs="+", default=CKNNA_SIZES, help="N values for --cknna")
p.add_argument("--case", default="", help=argparse.SUPPRESS)   # internal: run one case in this process
args = p.parse_args()
for k, v in (MAIN_SH if args.backbone is None else OTHERS).items():
    if getattr(args, k) is None:
        setattr(args, k, v)

CASES = ["baseline", "rscl", "baseline-cached", "rscl-cached", "paired-cached", "attention-cached", "align-cached",
         "predict", "vision-train", "vision-dual"]
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}   # dense bf16, per GPU


def device_name(device):
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return machine()


def machine():
    """The CPU by name, its cores, memory and torch's threads: the figures depend on all four."""
    model = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        names = [l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")]
        model = names[0] if names else model
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 if hasattr(os, "sysconf") else float("nan")
    return (f"{model} ({platform.machine()}), {os.cpu_count()} cores, {ram:.0f} GB, torch {torch.__version__} "
            f"with {torch.get_num_threads()} threads")


def make_case_config(vision="frozen", align_dim=0):
    return make_config(backbone=args.backbone, size=args.size, cameras=[f"cam{v}" for v in range(args.views)],
                       image_size=args.image_size, token_pool=args.token_pool, adapter_dropout=args.adapter_dropout,
                       vision=vision, align_dim=align_dim)


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_case(case, device):
    torch.manual_seed(0)
    weights = "random" if args.random_init else True
    backbone = Backbone(args.backbone, args.backbone_path, device=device, weights=weights, pool=args.token_pool)
    vision = case[len("vision-"):] if case.startswith("vision-") else "frozen"   # train | dual: E' trains live
    cfg = make_case_config(vision, align_dim=backbone.dim if case.startswith("align") else 0)   # teacher: the backbone
    policy = Policy(cfg, backbone=backbone, device=device)
    model = torch.compile(policy) if args.compile else policy
    B, cuda = args.batch_size, device.startswith("cuda")
    bf16 = cuda or cpu_bf16()   # train.py's autocast
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16) if bf16 else nullcontext()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (B, args.views, args.image_size, args.image_size, 3), dtype=np.uint8)
    instructions = ["pick up the red can and place it in the bin"] * B
    q = torch.rand(B, cfg.state_dim, device=device) * 2 - 1
    A = torch.rand(B, cfg.horizon, cfg.action_dim, device=device) * 2 - 1
    if case == "predict":
        return predict_latency(policy, images[:1], q[:1], instructions[:1], device)
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.95, 0.999), fused=cuda)
    cached, teacher = case.endswith("cached"), None
    if cached:   # what the cache holds: 16-bit features in host memory (pinned, as the loader gives them)
        f, m, v = backbone(images, instructions)
        host = [f.to(torch.float16).cpu(), m.cpu(), v.cpu()]
        host = [t.pin_memory() for t in host] if cuda else host
        n = backbone.tokens_per_view(args.image_size)
        teacher = teacher_targets(host[0].float(), host[2], n, n).to(device) if cfg.align_dim else None   # --align

    def step(rscl=case.startswith("rscl"), align=False):
        if cached:
            feats, mask, views = (t.to(device, non_blocking=True) for t in host)
            feats = feats.to(torch.bfloat16 if cuda else torch.float32)
        elif vision == "train":   # E' replaces E: train.py skips the frozen pass
            feats, mask, views = None, None, None
        else:
            feats, mask, views = backbone(images, instructions)
        with autocast:
            out = model(feats, mask, views, q, A, rscl="proprio" if rscl else "none", teacher=teacher if align else None,
                        pixels=(images, instructions) if vision != "frozen" else None)
            loss = out["loss_fm"] + out.get("loss_rscl", 0.0) + 0.2 * out.get("loss_align", 0.0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    policy.train()
    if case == "paired-cached":
        return paired(case, dict(baseline=lambda: step(False), rscl=lambda: step(True)), device)
    if case == "align-cached":       # --align (the teacher: the backbone, its targets from the cached features)
        return paired(case, dict(baseline=lambda: step(False), align=lambda: step(False, align=True)), device)
    if case == "attention-cached":   # the CPU baseline step: attention written out (its path here) vs through SDPA
        import attention
        def sdpa_step():
            math_attention, attention.math_attention = attention.math_attention, attention.sdpa
            try:
                step(False)
            finally:
                attention.math_attention = math_attention
        return paired(case, dict(math=lambda: step(False), sdpa=sdpa_step), device)
    for _ in range(args.warmup):
        step()
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.iters):
        step()
    sync(device)
    dt = (time.perf_counter() - t0) / args.iters
    tflops = flops / dt / 1e12
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in device_name(device)), None) if cuda else None
    return dict(case=case, samples_per_s=B / dt, step_ms=1e3 * dt, tflop_per_sample=flops / B / 1e12,
                achieved_tflops=tflops, mfu=tflops / peak if peak else None, peak_mem_gb=peak_memory(device))


def paired(case, steps, device):
    """Two kinds of step alternating in one process, each timed alone: the ratio of the medians moves less with
    other jobs' load on a shared machine than the ratio of two separate runs. steps: {name: step()}, two of them."""
    times = {k: [] for k in steps}
    for _ in range(args.warmup):
        for fn in steps.values():
            fn()
    for _ in range(args.paired_iters):
        for kind, fn in steps.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[kind].append(time.perf_counter() - t0)
    (a, ma), (b, mb) = ((k, 1e3 * statistics.median(v)) for k, v in times.items())
    return {"case": case, f"{a}_step_ms": ma, f"{b}_step_ms": mb, f"{b}_over_{a}": mb / ma, "steps_each": args.paired_iters}


@torch.no_grad()
def predict_latency(policy, images, q, instructions, device):
    policy.eval()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else nullcontext()
    with autocast:
        for _ in range(args.warmup):
            policy.predict(images, q, instructions)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(args.iters):
            policy.predict(images, q, instructions)
        sync(device)
    return dict(case="predict", chunk_latency_ms=1e3 * (time.perf_counter() - t0) / args.iters,
                euler_steps=policy.cfg.euler_steps, peak_mem_gb=peak_memory(device))


def count_flops():
    """FLOPs per sample of one training step, by torch's counter: the frozen backbone's forward
    (run once on the CPU with random weights, batch 1) and the policy's forward + backward for the
    baseline and for RS-CL (on the meta device: shapes only, no memory, no time; at size tiny on the CPU, where it is
    cheap and RS-CL's cut-off pass has its real, merged length: on meta it is counted at full length, an upper
    bound; in train mode, so with the model's adapter dropout, as train.py runs it: see Adapter.pair)."""
    import torch.nn as nn
    from torch.utils.flop_counter import FlopCounterMode
    backbone = Backbone(args.backbone, args.backbone_path, device="cpu", weights="random" if args.random_init else True,
                        pool=args.token_pool)
    images = np.zeros((1, args.views, args.image_size, args.image_size, 3), np.uint8)
    with FlopCounterMode(display=False) as c:
        feats, mask, views = backbone(images, ["pick up the red can and place it in the bin"])
    backbone_flops = c.get_total_flops()
    stub = nn.Module()   # the policy's trainable parts only need the backbone's width
    stub.dim, stub.layer = backbone.dim, backbone.layer
    cfg = make_case_config()
    dev = "cpu" if args.size == "tiny" else "meta"   # tiny: real and cheap, and the cut-off pass's merged length is known
    with torch.device(dev):
        policy = Policy(cfg, backbone=stub, device=dev)
    B = 2
    on = lambda t: t.expand(B, *t.shape[1:]).to(dev)
    q, A = torch.zeros(B, cfg.state_dim, device=dev), torch.zeros(B, cfg.horizon, cfg.action_dim, device=dev)
    out = dict(device="flop count (no timing)", backbone=args.backbone, size=args.size, image_size=args.image_size,
               views=args.views, tokens=int(feats.shape[1]), backbone_fwd_tflop_per_sample=backbone_flops / 1e12,
               trainable_params_m=sum(p.numel() for n, p in policy.named_parameters()) / 1e6)
    beta = torch.distributions.Beta   # the flow time's sampler has no meta kernel: a uniform stand-in while
    torch.distributions.Beta = lambda a, b: torch.distributions.Uniform(0 * a, 0 * b + 1, validate_args=False)  # counting
    try:
        for case in ("baseline", "rscl"):
            with FlopCounterMode(display=False) as c:
                o = policy(on(feats), on(mask), on(views), q, A, rscl="proprio" if case == "rscl" else "none")
                (o["loss_fm"] + o.get("loss_rscl", 0.0)).backward()
            out[f"{case}_policy_tflop_per_sample"] = c.get_total_flops() / B / 1e12
    finally:
        torch.distributions.Beta = beta
    total = {c: out["backbone_fwd_tflop_per_sample"] + out[f"{c}_policy_tflop_per_sample"] for c in ("baseline", "rscl")}
    out.update(baseline_total=total["baseline"], rscl_total=total["rscl"], rscl_over_baseline=total["rscl"] / total["baseline"],
               rscl_over_baseline_cached=out["rscl_policy_tflop_per_sample"] / out["baseline_policy_tflop_per_sample"])
    return out


def peak_memory(device):
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20   # KiB -> GiB, whole process


def main():
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if args.backbone not in BACKBONES or args.size not in SIZES:
        sys.exit(f"error: choose --backbone from {', '.join(BACKBONES)} and --size from {', '.join(SIZES)}")
    for k, lo in dict(batch_size=2, image_size=16, views=1, token_pool=1, warmup=0, iters=1, paired_iters=1).items():   # RS-CL needs a pair
        if getattr(args, k) < lo:
            sys.exit(f"error: --{k.replace('_', '-')} must be at least {lo} (got {getattr(args, k)})")
    if not 0 <= args.adapter_dropout < 1:
        sys.exit(f"error: --adapter-dropout must be in [0, 1) (got {args.adapter_dropout})")
    if min(args.cknna_sizes) < 11:
        sys.exit(f"error: --cknna-sizes must be at least 11 each (k = 10 neighbours; got {min(args.cknna_sizes)})")
    if device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"error: --device {args.device}: no CUDA GPU is visible here: use --device cpu (or auto)")
    if args.cknna:
        return bench_cknna(args.cknna_sizes, 10, machine())
    if args.flops_only:
        print(json.dumps(count_flops()))
        return
    if args.case:
        print(json.dumps(run_case(args.case, device)))
        return
    header = dict(device=device_name(device), torch=torch.__version__, backbone=args.backbone, size=args.size,
                  batch_size=args.batch_size, image_size=args.image_size, views=args.views, token_pool=args.token_pool,
                  adapter_dropout=args.adapter_dropout, random_init=args.random_init, compile=args.compile,
                  precision="bf16 autocast" if device.startswith("cuda") or cpu_bf16() else "float32")
    print(json.dumps(header))
    results = {}
    for case in CASES:
        cmd = [sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--case", case]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"error: case {case} failed:\n{r.stderr[-2000:]}")
        results[case] = json.loads(r.stdout.strip().splitlines()[-1])
        print(json.dumps(results[case]), flush=True)
    ms = {c: results[c]["step_ms"] for c in CASES[:4]}
    flop = {c: results[c]["tflop_per_sample"] for c in CASES[:4]}
    print(json.dumps(dict(summary=True, rscl_over_baseline_live=ms["rscl"] / ms["baseline"],
                          rscl_over_baseline_cached=ms["rscl-cached"] / ms["baseline-cached"],
                          rscl_over_baseline_cached_paired=results["paired-cached"]["rscl_over_baseline"],
                          rscl_over_baseline_flops_live=flop["rscl"] / flop["baseline"],
                          rscl_over_baseline_flops_cached=flop["rscl-cached"] / flop["baseline-cached"],
                          cache_speedup_baseline=ms["baseline"] / ms["baseline-cached"],
                          cache_speedup_rscl=ms["rscl"] / ms["rscl-cached"],
                          sdpa_over_math_attention_cached=results["attention-cached"]["sdpa_over_math"],
                          align_over_baseline_cached_paired=results["align-cached"]["align_over_baseline"],
                          train_vision_over_baseline_live=results["vision-train"]["step_ms"] / ms["baseline"],
                          dual_encoder_over_baseline_live=results["vision-dual"]["step_ms"] / ms["baseline"])))


if __name__ == "__main__":
    main()
