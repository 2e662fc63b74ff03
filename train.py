"""
Train the RS-CL policy: flow matching on action chunks, plus lambda * RS-CL with --rscl.

    python train.py --rscl                                   # tiny backbone, CPU, data/demos.hdf5
    python train.py --backbone qwen2.5-vl-3b --rscl          # one GPU, the paper's sizes
    python train.py --rscl --align --teacher dinov2-s       # + alignment to a frozen teacher (align.py)
    python train.py --rscl --dual-encoder                   # + a trainable copy of the vision encoder (vision.py)
    torchrun --nproc_per_node 8 train.py --backbone qwen2.5-vl-3b --rscl   # several GPUs

A plain nanoGPT-shaped loop: bf16 autocast on CUDA (and on CPUs with native bf16 matmuls), AdamW (GR00T's hyper-parameters, no decay on
biases and norms), warm-up then cosine lr, gradient clipping and accumulation, periodic validation,
atomic checkpoints of plain types, exact --resume, an EMA of the weights (--ema), a tqdm bar and a JSONL log.
"""
import argparse
import math
import os
import re
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict

import numpy as np
import torch
from tqdm import tqdm

from align import batch_targets, make_teacher
from backbone import BACKBONES, Backbone, WeightsNotFound, cpu_bf16
from data import Batches, DataError, fingerprint, open_like
from features import build_cache
from layouts import FLIPS, LAYOUTS, ORIENTATIONS, run_layout
from loss import rscl_lambda
from model import SIZES, Policy, make_config
from output import OutputError
from runfolder import RESUMABLE, RunFolder, data_changed, folder_problem, resume_checkpoint


def die(msg, code=2):   # bad input: one clear line on stderr, a non-zero exit, nothing overwritten
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(code)


# -----------------------------------------------------------------------------
# config: flat, hyphenated flags; vars(args) is the config that is printed, logged and saved
p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.error = lambda msg: die(f"{msg}: see python train.py --help")   # argparse's errors in the house form
p.add_argument("--backbone", default="tiny", choices=list(BACKBONES))
p.add_argument("--backbone-path", default="", help="local folder with the backbone's weights (default: hub id)")
p.add_argument("--layer", type=int, default=-1, help="LLM layer whose output is the feature (-1: the backbone's default)")
p.add_argument("--token-pool", type=int, default=1, help="dinov2-s: average-pool p x p patch tokens per view")
p.add_argument("--adapter-dropout", type=float, default=0.2, help="dropout in the adapter (attention and MLP)")
p.add_argument("--adapter-pos", action="store_true", help="a learned embedding per token slot in the adapter (dinov2-s, siglip2)")
p.add_argument("--size", default="", help=f"adapter + DiT size, one of {', '.join(SIZES)} (default: tiny for the "
                                          f"CPU backbones tiny and dinov2-s, paper for a VLM)")
p.add_argument("--rscl", action="store_true", help="add the RS-CL loss")
p.add_argument("--rscl-target", default="proprio", choices=["proprio", "infonce", "action"],
               help="soft targets: proprio distances (RS-CL), identity (plain InfoNCE), next-action distances")
p.add_argument("--cutoff", default="view", choices=["view", "token", "span"], help="augmentation for z_tilde")
p.add_argument("--beta", type=float, default=1.0, help="temperature of the soft weights")
p.add_argument("--tau", type=float, default=0.2, help="temperature of the cosine similarities")
p.add_argument("--beta-scale", default="none", choices=["none", "median"],
               help="median: state distances divided by the batch's median first (beta becomes scale-free)")
p.add_argument("--lambda-floor", type=float, default=0.0, help="lambda decays from 1 to this (the paper: 0)")
p.add_argument("--rscl-on", default="u", choices=["u", "pooled-h"],
               help="what z is projected from: u's output w (the paper) or h mean-pooled (what CKNNA measures)")
p.add_argument("--align", action="store_true", help="align h at the image tokens to a frozen teacher's patch "
                                                      "features through a frozen random MLP (Don't Blind Your VLA)")
p.add_argument("--align-weight", type=float, default=None, help="weight of the align loss (default with --align: 0.2)")
p.add_argument("--teacher", default="", help=f"--align's teacher, one of {', '.join(BACKBONES)} (default: --backbone)")
p.add_argument("--train-vision", action="store_true", help="fine-tune a copy of the vision encoder; it replaces the frozen one")
p.add_argument("--dual-encoder", action="store_true", help="frozen + trainable copy of the vision encoder, fused per token")
p.add_argument("--vision-lr", type=float, default=None, help="peak lr of the trainable encoder (default: --lr / 10)")
p.add_argument("--data", default="data/demos.hdf5")
p.add_argument("--layout", default="", help=f"the data's layout, one of {', '.join(LAYOUTS)} (default: robomimic for "
                                            f"an HDF5 file, lerobot for a LeRobot dataset folder); see layouts.py")
p.add_argument("--cameras", default="", help="cameras as named in the data, comma-separated (default: the layout's)")
p.add_argument("--proprio-keys", default="", help="eef position, orientation, gripper keys; 'key' or 'key[a:b]' "
                                                  "(default: the layout's)")
p.add_argument("--orientation", default="", help=f"format of the orientation key: {', '.join(ORIENTATIONS)} "
                                                 f"(raw: q is the keys as given) (default: the layout's)")
p.add_argument("--image-flip", default="", help=f"{', '.join(FLIPS)} (default: the layout's)")
p.add_argument("--action-key", default="", help="LeRobot datasets: the action feature (default: the layout's)")
p.add_argument("--horizon", type=int, default=16, help="H, actions per chunk")
p.add_argument("--demos-per-task", type=int, default=0, help="training demos per task (0: all but the validation ones)")
p.add_argument("--sampling", default="balanced", choices=["balanced", "uniform"],
               help="batches: each task equally often (balanced) or each timestep equally often (uniform)")
p.add_argument("--augment", action="store_true", help="random crop + colour jitter on training images")
p.add_argument("--cache-features", action="store_true", help="run the frozen backbone once, train from its cached features")
p.add_argument("--cache-dir", default="data/cache")
p.add_argument("--workers", type=int, default=0, help="data loader worker processes")
p.add_argument("--out", default="", help="run folder (default: runs/<backbone>-<rscl|baseline>)")
p.add_argument("--resume", action="store_true", help="continue the run in --out from its ckpt.pt")
p.add_argument("--overwrite", action="store_true", help="allow a new run in an existing folder")
p.add_argument("--max-iters", type=int, default=600)
p.add_argument("--batch-size", type=int, default=32)
p.add_argument("--stop-after", type=int, default=0, help="stop after this step (as if interrupted; continue with --resume)")
p.add_argument("--grad-accum", type=int, default=1)
p.add_argument("--lr", type=float, default=1e-4)
p.add_argument("--warmup", type=float, default=0.05, help="fraction of max-iters of linear warm-up")
p.add_argument("--weight-decay", type=float, default=1e-5)
p.add_argument("--grad-clip", type=float, default=1.0)
p.add_argument("--ema", type=float, default=0.0, help="decay of an EMA of the weights, saved beside them (0: none)")
p.add_argument("--eval-every", type=int, default=100)
p.add_argument("--eval-iters", type=int, default=5)
p.add_argument("--log-every", type=int, default=10)
p.add_argument("--ckpt-every", type=int, default=200)
p.add_argument("--cknna-every", type=int, default=0, help="CKNNA of pooled h vs q on the validation set every K steps")
p.add_argument("--device", default="auto")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--precision", default="auto", choices=["auto", "fp32"],
               help="auto: bf16 autocast on CUDA and on CPUs with native bf16 (AMX); fp32: none")
p.add_argument("--compile", action="store_true", help="torch.compile the training forward (adapter, DiT, losses)")
args = p.parse_args()
args.size = args.size or ("tiny" if args.backbone in ("tiny", "dinov2-s") else "paper")   # CPU backbones: tiny


def check_args(a):
    """Every flag's range, checked once before anything runs: the first problem as one line."""
    at_least = dict(horizon=1, batch_size=1, grad_accum=1, max_iters=1, eval_every=1, eval_iters=1, log_every=1,
                    ckpt_every=1, stop_after=0, cknna_every=0, workers=0, demos_per_task=0, token_pool=1, layer=-1)
    for k, lo in at_least.items():
        if getattr(a, k) < lo:
            die(f"--{k.replace('_', '-')} must be at least {lo} (got {getattr(a, k)})")
    for k, lo, hi in (("lr", 1e-30, 1e30), ("beta", 1e-30, 1e30), ("tau", 1e-30, 1e30), ("grad_clip", 1e-30, 1e30),
                      ("warmup", 0, 1), ("lambda_floor", 0, 1), ("weight_decay", 0, 1e30), ("adapter_dropout", 0, 0.99),
                      ("ema", 0, 0.99999), ("seed", 0, 2**32 - 1)):   # the seeds torch.manual_seed takes
        if not lo <= getattr(a, k) <= hi:   # NaN fails every comparison
            die(f"--{k.replace('_', '-')} must be in [{lo}, {hi}] (got {getattr(a, k)})")
    if a.stop_after > a.max_iters:
        die(f"--stop-after {a.stop_after} is past --max-iters {a.max_iters}: the run would end first")
    cams = a.cameras.split(",") if a.cameras else []   # none: the layout's
    if "" in cams or len(set(cams)) != len(cams):
        die(f"--cameras '{a.cameras}' must name distinct cameras, comma-separated")
    if a.device != "auto" and (not re.fullmatch(r"cpu|cuda(:\d+)?", a.device) or "cuda" in a.device and not torch.cuda.is_available()):
        die(f"--device {a.device} is not available here: use auto, cpu{', cuda or cuda:N' * torch.cuda.is_available()}")
    for flag, path in (("--out", a.out), ("--cache-dir", a.cache_dir)):
        if os.path.isfile(path):
            die(f"{flag} {path} is a file: name a folder")
    for flag, v in (("--align-weight", a.align_weight), ("--teacher", a.teacher or None)):
        if v is not None and not a.align:
            die(f"{flag} is set but --align is not: add --align, or drop {flag}")
    if a.align:   # the defaults, resolved: the config says which teacher and weight
        a.align_weight, a.teacher = 0.2 if a.align_weight is None else a.align_weight, a.teacher or a.backbone
        if not 0 <= a.align_weight <= 1e30:
            die(f"--align-weight must be in [0, 1e+30] (got {a.align_weight})")
        if a.teacher not in BACKBONES:
            die(f"unknown --teacher '{a.teacher}': choose one of {', '.join(BACKBONES)}")
    trainable = "--train-vision" if a.train_vision else "--dual-encoder" if a.dual_encoder else ""   # vision.py
    if a.train_vision and a.dual_encoder:
        die("pass --train-vision (the copy replaces the frozen encoder) or --dual-encoder (both), not both")
    if a.vision_lr is not None and not trainable or not 0 <= (a.vision_lr or 0) <= 1e30:
        die(f"--vision-lr {a.vision_lr}: give a value >= 0 together with --train-vision or --dual-encoder")
    if a.cache_features and (a.augment or trainable):   # augmented images, or a trainable encoder: new features each step
        die(f"--cache-features cannot be used with {trainable or '--augment'}: its features change at every step; "
            f"drop --cache-features")
    a.vision_lr = (a.lr / 10 if a.vision_lr is None else a.vision_lr) if trainable else None   # the default, resolved
    vars(a).update(run_layout(vars(a)))   # the layout's '' resolved: the config says how the data is read


def main():
    ddp = int(os.environ.get("RANK", -1)) != -1   # launched by torchrun
    rank, world = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if ddp else (0, 1)
    check_args(args)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if ddp:
        torch.distributed.init_process_group(backend="nccl" if device == "cuda" else "gloo")
        if device == "cuda":
            device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
            torch.cuda.set_device(device)
    master = rank == 0
    if args.rscl and args.batch_size < 2:
        die("--rscl needs --batch-size >= 2: the contrastive loss compares samples within a batch")
    out = os.path.normpath(args.out or f"runs/{args.backbone}-{'rscl' if args.rscl else 'baseline'}{'-align' * args.align}"
                                        f"{'-vision' * args.train_vision}{'-dual' * args.dual_encoder}")
    ckpt_path = os.path.join(out, "ckpt.pt")
    folder = RunFolder(out, args.resume, args.overwrite, claim=master)   # before any check of out: ours alone
    if problem := folder_problem(out, args.data, args.resume, args.overwrite):
        die(problem)
    step, ckpt = 0, None
    if args.resume:   # the experiment must be the checkpoint's: refuse flags that would change it, by name
        try:
            ckpt = resume_checkpoint(ckpt_path, vars(args), p.get_default, RESUMABLE)
        except ValueError as e:
            die(str(e))
        step = folder.saved = ckpt["step"]

    # --- data: an HDF5 file (data.DemoDataset) or a LeRobot dataset folder (lerobot_data.LeRobotDemos) ---
    spec = dict(cameras=args.cameras.split(",") if args.cameras else None, horizon=args.horizon)
    train_ds = open_like(args.data, vars(args), split="train", max_demos=args.demos_per_task, **spec)
    val_ds = open_like(args.data, vars(args), split="val", **spec)
    if args.rscl and args.cutoff == "view" and len(train_ds.cameras) == 1:   # z_tilde's pass would see no token
        die(f"--cutoff view with one camera ({train_ds.cameras[0]}) cuts off every token: use --cutoff token or span")
    data_sha1 = fingerprint(train_ds)   # the data's content: --resume refuses data changed since (sim.py --extend)
    if problem := data_changed(ckpt or {}, data_sha1, args.data):
        die(problem)

    # --- model ---
    torch.manual_seed(args.seed + rank)
    try:
        backbone = Backbone(args.backbone, args.backbone_path, args.layer, device=device, pool=args.token_pool)
        backbone.check_images(train_ds.image_shape)
        teacher = make_teacher(args.teacher, backbone, train_ds.image_shape, device) if args.align else None
        cfg = make_config(backbone=args.backbone, backbone_path=args.backbone_path, layer=args.layer, size=args.size,
                          token_pool=args.token_pool, adapter_dropout=args.adapter_dropout, adapter_pos=args.adapter_pos,
                          cameras=train_ds.cameras, image_size=int(train_ds.image_shape[0]), action_dim=train_ds.action_dim,
                          horizon=args.horizon, state_dim=train_ds.q[0].shape[1], align_dim=teacher.dim if teacher else 0,
                          vision="train" if args.train_vision else "dual" if args.dual_encoder else "frozen")
        policy = Policy(cfg, backbone=backbone, device=device)
        if args.resume:
            policy.load_trainable(ckpt["model"])
    except (WeightsNotFound, ValueError) as e:
        die(str(e))
    if not args.resume:
        policy.set_stats(train_ds.stats())   # min-max statistics, computed once, carried in the checkpoint
    train_src, val_src = train_ds, val_ds
    if args.cache_features:   # the backbone is frozen (backbone.py), so its features can be computed once
        other = teacher if teacher is not backbone else None   # a teacher of its own: cached beside the backbone
        train_src = build_cache(policy.backbone, train_ds, args.cache_dir, "train", args.batch_size, other)
        val_src = build_cache(policy.backbone, val_ds, args.cache_dir, "val", args.batch_size, other)
    model = policy   # `policy` stays the plain module: checkpoints and evaluation use it
    if ddp:
        model = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=not args.rscl)
    if args.compile:
        model = torch.compile(model)

    # --- optimizer: only trainable parameters; no decay on biases and norms (1-D tensors); E' at --vision-lr ---
    params = [p for p in policy.parameters() if p.requires_grad]
    enc = {id(p) for p in policy.vision.encoder.parameters()} if policy.vision else set()
    parts = [([p for p in params if id(p) not in enc], 1.0)] + ([([p for p in params if id(p) in enc],
                                                                  args.vision_lr / args.lr)] if enc else [])
    groups = [dict(params=[p for p in ps if (p.dim() >= 2) == decay], weight_decay=args.weight_decay if decay else 0.0,
                   lr_scale=scale) for ps, scale in parts for decay in (True, False)]   # lr_scale: of the schedule
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.95, 0.999), eps=1e-8, fused=device.startswith("cuda"))
    # EMA of the trainable weights (Diffusion Policy's choice for evaluation): saved as ckpt["ema"], the raw ones train
    averaged = {n: w for n, w in policy.named_parameters() if w.requires_grad} if args.ema else {}
    ema = {n: (ckpt["ema"][n].to(device) if ckpt else w.detach().clone()) for n, w in averaged.items()} if args.ema else None
    if ckpt is not None:
        opt.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if device.startswith("cuda") and "cuda" in ckpt["rng"]:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"])
    bf16 = args.precision == "auto" and (device.startswith("cuda") or cpu_bf16())   # fp32 master weights either way
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16) if bf16 else nullcontext()

    def get_lr(it):
        """Linear warm-up for args.warmup of the run, then cosine to 0."""
        warm = max(1, int(args.warmup * args.max_iters))
        if it < warm:
            return args.lr * (it + 1) / warm
        return args.lr * 0.5 * (1 + math.cos(math.pi * (it - warm) / max(1, args.max_iters - warm)))

    def on_device(b):
        """A batch of images (backbone runs here, frozen) or of cached features -> the policy's inputs."""
        if "feats" in b:
            feats, mask, views = (b[k].to(device, non_blocking=True) for k in ("feats", "mask", "views"))
            feats = feats.to(torch.bfloat16 if device.startswith("cuda") else torch.float32)
        elif args.train_vision and teacher is not backbone:   # E' replaces the frozen features: skip E
            feats, mask, views = None, None, None
        else:
            feats, mask, views = policy.backbone(b["images"], b["instructions"])
        q = policy.normalize(b["q"].to(device, non_blocking=True), "q")
        A = policy.normalize(b["A"].to(device, non_blocking=True), "a")
        t = batch_targets(b, feats, views, backbone, teacher, cfg.image_size)   # --align: (B, V*n, D_t), else None
        pixels = (b["images"], b["instructions"]) if policy.vision else None    # what E' reads
        return feats, mask, views, q, A, t, pixels

    def loader(source, seed, first, n, augment_images=False, workers=0):
        ds = source.ds if hasattr(source, "ds") else source          # a FeatureCache keeps the DemoDataset's order
        groups = ds.task_groups() if args.sampling == "balanced" else None
        batches = Batches(source, args.batch_size, seed, n, augment_images, groups)
        return torch.utils.data.DataLoader(batches, batch_size=None, sampler=range(first, n), num_workers=workers,
                                           pin_memory=device.startswith("cuda"),
                                           generator=torch.Generator().manual_seed(seed))  # not the global RNG

    def losses(m, batch):
        *batch, t, pixels = batch
        with autocast:
            return m(*batch, rscl=args.rscl_target if args.rscl else "none", cutoff_kind=args.cutoff, beta=args.beta,
                     tau=args.tau, beta_scale=args.beta_scale, rscl_on=args.rscl_on, teacher=t, pixels=pixels)

    @torch.no_grad()
    def evaluate(n_batches=args.eval_iters):
        """Mean validation losses on fixed batches; the training RNG streams (CPU and GPU) are left untouched."""
        policy.eval()
        with torch.random.fork_rng(devices=[torch.device(device).index or 0] if device.startswith("cuda") else []):
            torch.manual_seed(1234)
            outs = [losses(policy, on_device(b)) for b in loader(val_src, 1234, 0, n_batches)]
        policy.train()
        return {f"val_{k}": float(np.mean([float(o[k]) for o in outs])) for k in outs[0]}

    def cknna_score():
        """CKNNA (k = 10) of h, mean-pooled over real tokens, against q on up to 512 validation samples."""
        from alignment_metrics import pooled_h_cknna   # a library: scripts import libraries, never each other
        policy.eval()
        with torch.no_grad(), autocast:
            batches = (on_device(b) for b in loader(val_src, 4321, 0, max(1, min(len(val_src), 512) // args.batch_size)))
            score = pooled_h_cknna(policy, batches)
        policy.train()
        return score

    # --- NaN guard: the first step with a non-finite loss or gradient, kept on the device (no sync per step), read
    # at log, eval and checkpoint steps; a checkpoint is written only if it is clean and the weights give a finite loss
    bad = torch.zeros((), dtype=torch.long, device=device)   # 0, or the first bad step + 1

    def stop(what, at):
        bar.close()
        die(f"{what} at step {at}: training stopped; {folder.kept(' and a lower --lr')}, or check the data", code=3)

    def guard(at, row=None):   # one host sync
        if int(bad):
            stop("loss is not finite (nan or inf)", int(bad))
        if row and not all(math.isfinite(v) for k, v in row.items() if "loss" in k):
            stop(f"loss is not finite on validation ({row})", at)

    def save(it):
        guard(it)
        finite = bool(torch.stack([p.detach().isfinite().all() for p in params]).all())
        if not finite or not all(math.isfinite(v) for v in evaluate(1).values()):   # weights that cannot be resumed
            stop("the weights are not usable (not finite, or their validation loss is not)", it)
        if not master:
            return
        state = dict(model=policy.trainable_state_dict(), optimizer=opt.state_dict(), config=vars(args), ema=ema,
                     model_config=asdict(cfg), stats=policy.get_stats(), step=it, data_fingerprint=data_sha1,
                     rng=dict(torch=torch.get_rng_state(),
                              **({"cuda": torch.cuda.get_rng_state()} if device.startswith("cuda") else {})))
        folder.save(state, it)   # atomic; a new run's folder takes out's place at its first checkpoint

    if master:   # every check has passed: only now is anything written (runfolder.py: nothing lost or half-written)
        folder.start(dict(args=vars(args), model=asdict(cfg), stats=policy.get_stats(), data_fingerprint=data_sha1))
        print(f"{out}: {len(train_ds)} train / {len(val_ds)} val samples, backbone {args.backbone} (layer "
              f"{policy.backbone.layer}, D={policy.backbone.dim}, {cfg.vision}), {sum(p.numel() for p in params) / 1e6:.2f}M "
              f"trainable, device {device}, {'RS-CL (' + args.rscl_target + ', ' + args.cutoff + ' cutoff)' if args.rscl else 'baseline'}"
              f"{f', align to {args.teacher} (weight {args.align_weight:g})' if args.align else ''}")

    # --- the loop ---
    policy.train()
    bar = tqdm(range(step, args.max_iters), initial=step, total=args.max_iters, disable=not master, dynamic_ncols=True)
    t0 = time.time()
    batches = iter(loader(train_src, args.seed * 1000 + rank, step * args.grad_accum, args.max_iters * args.grad_accum,
                          args.augment, args.workers))
    for it in bar:
        folder.check_stop()   # a Ctrl-C that landed where Python swallows the exit
        lr = get_lr(it)
        for g in opt.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)   # a checkpoint from before --vision-lr: 1
        lam = rscl_lambda(it, args.max_iters, args.lambda_floor) if args.rscl else 0.0
        finite = torch.ones((), dtype=torch.bool, device=device)
        for micro in range(args.grad_accum):
            if ddp:   # all-reduce gradients on the last micro-step only
                getattr(model, "_orig_mod", model).require_backward_grad_sync = micro == args.grad_accum - 1
            out_ = losses(model, on_device(next(batches)))
            loss = out_["loss_fm"] + lam * out_.get("loss_rscl", 0.0) + (args.align_weight or 0) * out_.get("loss_align", 0.0)
            (loss / args.grad_accum).backward()
            finite &= torch.isfinite(loss.detach())
        grad_norm = torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
        finite &= torch.isfinite(grad_norm)   # the same on every DDP rank: gradients are all-reduced
        bad = torch.where((bad == 0) & ~finite, it + 1, bad)   # on the device: no sync
        if (it + 1) % args.log_every == 0:
            guard(it + 1)
        opt.step()
        opt.zero_grad(set_to_none=True)
        for n, w in averaged.items():   # EMA: e <- decay e + (1 - decay) w
            ema[n].lerp_(w.detach(), 1 - args.ema)
        if (it + 1) % args.log_every == 0 and master:
            dt, t0 = time.time() - t0, time.time()
            row = dict(step=it + 1, loss_fm=out_["loss_fm"].item(), lr=lr, lam=lam, grad_norm=float(grad_norm),
                       samples_per_s=args.log_every * args.batch_size * args.grad_accum * world / dt)
            row.update({k: v.item() for k, v in out_.items() if k != "loss_fm"})
            bar.set_postfix(fm=f"{row['loss_fm']:.4f}", rscl=f"{row.get('loss_rscl', 0):.3f}", lam=f"{lam:.2f}",
                            lr=f"{lr:.1e}", sps=f"{row['samples_per_s']:.1f}")
            folder.log(row)
        row = evaluate() if master and ((it + 1) % args.eval_every == 0 or it + 1 == args.max_iters) else {}
        if master and args.cknna_every and ((it + 1) % args.cknna_every == 0 or it + 1 == args.max_iters):
            row["val_cknna_h_q"] = cknna_score()
        if row:
            guard(it + 1, row)
            row = dict(step=it + 1, **row)
            folder.log(row)
            bar.write(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
        if (it + 1) % args.ckpt_every == 0 or it + 1 == args.max_iters or it + 1 == args.stop_after:
            save(it + 1)
        if it + 1 == args.stop_after:
            break
    if master:
        print(f"done: {ckpt_path} (step {folder.saved}), log {os.path.join(out, 'log.jsonl')}")
    if ddp:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    try:
        main()
    except OutputError as e:   # a write that failed (output.py): it says what is kept
        die(str(e))
    except KeyboardInterrupt:  # Ctrl-C before --out was claimed (after: RunFolder.claim's handler)
        print("\ninterrupted: nothing was written", file=sys.stderr)
        sys.exit(130)
    except DataError as e:   # bad data met at any point, e.g. a video that stops decoding mid-run (from a loader
        die(str(e).strip().splitlines()[-1].split("DataError: ")[-1])   # worker: the traceback's last line)
