"""PyTorch side of `pixelseq bench`: builds one model from pixelseq's resolved model config and
times the same training and inference steps pixelseq times, printing one JSON line
{params, train_img_per_s, infer_img_per_s, peak_mem_mb, max_allocated_mb, formulation}.

    python run.py --model '{"name": "s4d", ...}' --channels 1 --seq-len 1024 --batch 64 \
        [--optim '{"lr": ...}'] [--steps 10] [--warmup 3] [--device cpu|cuda:N] [--threads N] \
        [--precision fp32|bf16] [--count-only] [--profile PREFIX]

With --count-only it prints {"params": n} only; --model may then be a JSON list of configs, for
which it prints the list of counts.

Training step: forward in train mode (bf16 autocast on CUDA when asked), cross-entropy with the
config's label smoothing, zero_grad, backward, clip_grad_norm_ when optim.clip_norm > 0,
torch.optim.AdamW with PyTorch's default implementation (foreach on CUDA, for-loop on CPU) and
pixelseq's groups (decay: matrices; no decay: 1-D tensors and "no_decay" tags; ssm: own lr, no
decay). Inference: eval mode under torch.no_grad. Warm-up steps, then the median of the timed
steps, each between device synchronisations. Peak memory (MiB): on CPU the process's VmHWM, on
CUDA the highest device memory in use (torch.cuda.mem_get_info total - free, sampled after each
step) minus its value before the model was built, which is what pixelseq reports;
max_allocated_mb is torch.cuda.max_memory_allocated."""

import argparse
import importlib
import json
import os
import statistics
import sys
import time
import warnings

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# pixelseq model name -> module of this folder.
FAMILIES = {
    "transformer": "transformer",
    "nystromformer": "nystromformer",
    "fnet": "fnet",
    "pit": "pit",
    "s4d": "s4d",
    "lru": "lru",
    "trellisnet": "trellisnet",
    "lipschitz-rnn": "lipschitz",
}

MIB = 1024.0 * 1024.0


def build(cfg, channels, seq_len):
    if cfg["name"] not in FAMILIES:
        raise SystemExit(f"error: no PyTorch reference for model `{cfg['name']}`")
    return importlib.import_module(FAMILIES[cfg["name"]]).build(cfg, channels, seq_len)


def count(cfg, channels, seq_len):
    model, _ = build(cfg, channels, seq_len)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def param_groups(model, optim):
    decay, no_decay, ssm = [], [], []
    for p in model.parameters():
        group = getattr(p, "_optim_group", None)
        if group == "ssm":
            ssm.append(p)
        elif group == "no_decay" or p.dim() < 2:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [
        {"params": decay, "weight_decay": optim.get("weight_decay", 0.0)},
        {"params": no_decay, "weight_decay": 0.0},
        {"params": ssm, "weight_decay": 0.0, "lr": optim.get("ssm_lr") or optim.get("lr", 1e-3)},
    ]
    return [g for g in groups if g["params"]]


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    raise SystemExit("error: no VmHWM in /proc/self/status")


def median_seconds(fn, warmup, steps, sync):
    times = []
    for i in range(warmup + steps):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="pixelseq's resolved [model] table as JSON")
    ap.add_argument("--optim", default="{}", help="pixelseq's resolved [optim] table as JSON")
    ap.add_argument("--channels", type=int, required=True)
    ap.add_argument("--seq-len", type=int, required=True)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--count-only", action="store_true", help="print {params} and exit; --model may be a list")
    ap.add_argument("--profile", metavar="PREFIX", help="after timing, profile --steps training steps: PREFIX.json, PREFIX.txt")
    args = ap.parse_args()
    cfg, optim = json.loads(args.model), json.loads(args.optim)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    torch.manual_seed(0)
    if args.count_only:
        counts = [count(c, args.channels, args.seq_len) for c in (cfg if isinstance(cfg, list) else [cfg])]
        print(json.dumps({"params": counts if isinstance(cfg, list) else counts[0]}))
        return

    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    peak = 0

    def sample():
        nonlocal peak
        if cuda:
            free, total = torch.cuda.mem_get_info(device)
            peak = max(peak, total - free)

    if cuda:
        torch.zeros(1, device=device)
        sync()
        free, total = torch.cuda.mem_get_info(device)
        baseline = total - free
    model, note = build(cfg, args.channels, args.seq_len)
    model = model.to(device)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt = torch.optim.AdamW(
        param_groups(model, optim),
        lr=optim.get("lr", 1e-3),
        betas=tuple(optim.get("betas", (0.9, 0.999))),
        eps=optim.get("eps", 1e-8),
    )
    xs = torch.randint(0, 256, (args.batch, args.seq_len, args.channels), dtype=torch.uint8, device=device)
    ys = torch.randint(0, 10, (args.batch,), device=device)
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")
    clip, smoothing = optim.get("clip_norm", 0.0), optim.get("label_smoothing", 0.0)

    def train_step():
        with autocast():
            logits = model(xs).float()
        loss = F.cross_entropy(logits, ys, label_smoothing=smoothing)
        opt.zero_grad()
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        sample()

    def infer_step():
        with torch.no_grad(), autocast():
            model(xs)
        sample()

    model.train()
    train = median_seconds(train_step, args.warmup, args.steps, sync)
    model.eval()
    infer = median_seconds(infer_step, args.warmup, args.steps, sync)
    result = {
        "params": params,
        "train_img_per_s": args.batch / train,
        "infer_img_per_s": args.batch / infer,
        "peak_mem_mb": (peak - baseline) / MIB if cuda else peak_rss_mib(),
        "formulation": note,
    }
    if cuda:
        result["max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / MIB
    if args.profile:
        model.train()
        profile(train_step, args.steps, sync, cuda, args.profile)
    print(json.dumps(result))


def profile(step, steps, sync, cuda, prefix):
    """`steps` calls of `step` under torch.profiler (CPU, and CUDA kernels on a GPU): the Chrome
    trace in PREFIX.json, operators by self time in PREFIX.txt."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profiler(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync()
    prof.export_chrome_trace(prefix + ".json")
    averages = prof.key_averages()
    tables = [averages.table(sort_by="self_cpu_time_total", row_limit=40)]
    if cuda:
        tables.append(averages.table(sort_by="self_device_time_total", row_limit=40))
    with open(prefix + ".txt", "w") as f:
        f.write("\n\n".join(tables))


if __name__ == "__main__":
    main()
