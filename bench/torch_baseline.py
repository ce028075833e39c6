#!/usr/bin/env python3
"""PyTorch training throughput for the shapes fathom-bench measures: the bar fathom has to beat.

Workloads (random tokens, real optimizer steps):
  llama-130m  transformers' LlamaForCausalLM with the paper's config: 12 layers, d_model 768,
              d_ff 2048 (SwiGLU), 12 heads, vocab 32000, untied embeddings, RMSNorm eps 1e-6,
              RoPE theta 10000, no biases; seq 256, batch 128.
  llama-350m  the same at the paper's 350M size: 24 layers, d_model 1024, d_ff 2736, 16 heads;
              seq 256, batch 128.
  gpt2-124m   the usual minimal GPT-2 (nanoGPT's model): LayerNorm with bias, GELU (tanh),
              learned positions, tied embeddings, vocab 50304, F.scaled_dot_product_attention
              with is_causal; seq 1024, batch 32.

Each step: forward and cross-entropy under bf16 autocast (fp32 weights; autocast runs the loss in
fp32), backward, gradient-norm clipping to 1.0, AdamW (lr 1e-4, betas 0.9/0.95; fused on CUDA) with
nanoGPT's two parameter groups: weight decay 0.1 on the matrices and embeddings, none on biases
and norm weights; zero_grad(set_to_none). The model's forward returns the loss (never the logits),
so torch.compile sees the LM head and the cross-entropy in one graph and never has to hand back the
(B, T, V) logits. Modes: eager, and compile (torch.compile of the model, default options; the
optimizer step stays eager). Inputs and targets are contiguous tensors made before timing.
Timing: --warmup steps, then --steps timed with CUDA events around the whole timed loop; the
peak memory is torch.cuda.max_memory_allocated over the timed steps (statistics reset after
warm-up, so compilation transients do not count; parameters, gradients and optimizer state do).
Each workload x mode runs in a fresh Python process (--same-process: all in this one), so no
measurement inherits the allocator's cache, compiled graphs or library state of an earlier one.

Why the GPT-2 figure changed: an earlier version measured 508,665 tokens/s for gpt2-124m where
the standard minimal nanoGPT model ran at 553,715 on the same card. Read side by side, the model
code was the same (tied, vocab 50304, SDPA is_causal, tanh GELU, fused AdamW); the measurement was
not: it compiled a closure holding autocast, the model and the loss instead of the model; it sliced
the targets out of the (B, T + 1) token batch inside the step (a strided tensor that the loss
flattens with a copy, in the graph); it decayed every parameter in one group; and it measured the
compiled model in the process that had just run the eager model and, for gpt2-124m, both llama
runs. The script now builds and measures the model as nanoGPT does, each run in its own process.

FLOPs a token (the estimate fathom-bench uses): 6 * N + 6 * L * d * T, N = parameters without the
untied input embedding (the LM head counts; a tied embedding counts once as the LM head).

Output: one JSON line per workload x mode on stdout as each finishes, then a table; --json-out
writes the same JSON lines to a file. A workload that fails (e.g. out of memory) gives a line with
"error" and the exit status is 1. --shape NAME prints the workload's "batch seq" and exits (for
bench/run.sh, so that fathom-bench runs the same shapes).

Needs torch (and transformers for the Llama workloads); never downloads anything: models are
built from their configs. --smoke runs tiny shapes for 2 steps (on CPU when there is no GPU) to
check that the script works.

Examples:
  python3 bench/torch_baseline.py
  python3 bench/torch_baseline.py --workloads gpt2-124m --modes compile --json-out torch.jsonl
  python3 bench/torch_baseline.py --smoke
"""

import argparse
import gc
import json
import math
import statistics
import subprocess
import sys
import time


# --------------------------------------------------------------------------- workloads

WORKLOADS = {
    "llama-130m": dict(arch="llama", layers=12, d_model=768, heads=12, d_ff=2048, vocab=32000,
                       seq=256, batch=128, norm_eps=1e-6, rope_theta=10000.0, tied=False),
    "llama-350m": dict(arch="llama", layers=24, d_model=1024, heads=16, d_ff=2736, vocab=32000,
                       seq=256, batch=128, norm_eps=1e-6, rope_theta=10000.0, tied=False),
    "gpt2-124m": dict(arch="gpt2", layers=12, d_model=768, heads=12, d_ff=3072, vocab=50304,
                      seq=1024, batch=32, norm_eps=1e-5, rope_theta=None, tied=True),
}

# Tiny versions of the same models for --smoke.
SMOKE = {
    "llama-130m": dict(layers=2, d_model=64, heads=4, d_ff=160, vocab=256, seq=32, batch=4),
    "llama-350m": dict(layers=3, d_model=64, heads=4, d_ff=176, vocab=256, seq=32, batch=4),
    "gpt2-124m": dict(layers=2, d_model=64, heads=4, d_ff=256, vocab=256, seq=32, batch=4),
}


def build_llama(w):
    import torch.nn as nn
    import torch.nn.functional as F
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=w["vocab"], hidden_size=w["d_model"], intermediate_size=w["d_ff"],
        num_hidden_layers=w["layers"], num_attention_heads=w["heads"],
        num_key_value_heads=w["heads"], max_position_embeddings=max(w["seq"], 2048),
        rms_norm_eps=w["norm_eps"], rope_theta=w["rope_theta"], hidden_act="silu",
        attention_bias=False, mlp_bias=False, tie_word_embeddings=w["tied"], use_cache=False,
        attn_implementation="sdpa")
    # transformers 5 keeps RoPE in rope_parameters, 4 in rope_theta: check that it took.
    rope = getattr(config, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    assert theta == w["rope_theta"], f"RoPE theta {theta} != {w['rope_theta']}"

    class LlamaLoss(nn.Module):
        """LlamaForCausalLM whose forward returns the mean next-token cross-entropy."""

        def __init__(self):
            super().__init__()
            self.lm = transformers.LlamaForCausalLM(config)

        def forward(self, x, y):  # (B, T), (B, T) -> ()
            logits = self.lm(input_ids=x, use_cache=False).logits  # (B, T, V)
            return F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))

    model = LlamaLoss()
    return model, model.lm.get_input_embeddings().weight


def build_gpt2(w):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    d, h = w["d_model"], w["heads"]
    bias = w.get("bias", True)  # --no-bias: none in the linear layers and LayerNorms

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(d, 3 * d, bias=bias)
            self.proj = nn.Linear(d, d, bias=bias)

        def forward(self, x):  # (B, T, d)
            b, t, _ = x.shape
            q, k, v = self.qkv(x).view(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)  # (B, h, T, hd)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.proj(y.transpose(1, 2).reshape(b, t, d))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = nn.LayerNorm(d, eps=w["norm_eps"], bias=bias)
            self.attn = Attention()
            self.ln_2 = nn.LayerNorm(d, eps=w["norm_eps"], bias=bias)
            self.fc = nn.Linear(d, w["d_ff"], bias=bias)
            self.fc_proj = nn.Linear(w["d_ff"], d, bias=bias)

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.fc_proj(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))

    class GPT2(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(w["vocab"], d)
            self.wpe = nn.Embedding(w["seq"], d)
            self.blocks = nn.ModuleList(Block() for _ in range(w["layers"]))
            self.ln_f = nn.LayerNorm(d, eps=w["norm_eps"], bias=bias)
            self.lm_head = nn.Linear(d, w["vocab"], bias=False)
            self.lm_head.weight = self.wte.weight  # tied
            for name, p in self.named_parameters():
                if name.endswith("bias"):
                    nn.init.zeros_(p)
                elif p.dim() >= 2:
                    # GPT-2's init: N(0, 0.02), residual projections scaled by 1/sqrt(2L).
                    std = 0.02 / math.sqrt(2 * w["layers"]) if name.endswith("proj.weight") else 0.02
                    nn.init.normal_(p, 0.0, std)

        def forward(self, x, targets):  # (B, T), (B, T) -> ()
            pos = torch.arange(x.shape[1], device=x.device)
            y = self.wte(x) + self.wpe(pos)
            for block in self.blocks:
                y = block(y)
            logits = self.lm_head(self.ln_f(y))  # (B, T, V)
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    model = GPT2()
    return model, model.wte.weight


def flops_per_token(model, input_embedding, tied, w):
    """6 N + 6 L d T with N = parameters without the untied input embedding."""
    n = sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once
    if not tied:
        n -= input_embedding.numel()
    return 6 * n + 6 * w["layers"] * w["d_model"] * w["seq"], n


# --------------------------------------------------------------------------- one measurement

def run_one(name, mode, args, device):
    import torch

    w = dict(WORKLOADS[name])
    if args.smoke:
        w.update(SMOKE[name])
    if args.batch:
        w["batch"] = args.batch
    if args.seq:
        w["seq"] = args.seq
    if args.no_bias:
        w["bias"] = False
    torch.manual_seed(0)
    model, input_embedding = (build_llama if w["arch"] == "llama" else build_gpt2)(w)
    model = model.to(device).train()
    flops, n_params = flops_per_token(model, input_embedding, w["tied"], w)
    total_params = sum(p.numel() for p in model.parameters())

    # nanoGPT's groups: decay the matrices and embeddings, not the biases and norm weights.
    params = list(model.parameters())  # a tied weight once
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    # Fused on CUDA; no silent fallback to a slower implementation there.
    optimizer = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.95),
                                  **({"fused": True} if device == "cuda" else {}))
    fused = bool(optimizer.defaults.get("fused"))

    b, t, v = w["batch"], w["seq"], w["vocab"]
    step_model = torch.compile(model, mode=args.compile_mode) if mode == "compile" else model
    # A few fixed batches of random tokens, cycled: contiguous inputs and next-token targets.
    batches = []
    for _ in range(4):
        tokens = torch.randint(0, v, (b, t + 1), device=device)
        batches.append((tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()))

    def step(i):
        x, y = batches[i % len(batches)]
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            loss = step_model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t_compile = time.perf_counter()
    first_loss = None
    for i in range(args.warmup):
        loss = step(i)
        if first_loss is None:
            first_loss = float(loss)
    sync()
    warmup_s = time.perf_counter() - t_compile

    if cuda:
        torch.cuda.reset_peak_memory_stats()
        events = [torch.cuda.Event(enable_timing=True) for _ in range(args.steps + 1)]
        events[0].record()
        for i in range(args.steps):
            loss = step(args.warmup + i)
            events[i + 1].record()
        torch.cuda.synchronize()
        per_step = [events[i].elapsed_time(events[i + 1]) for i in range(args.steps)]
        total_ms = events[0].elapsed_time(events[-1])
        peak = torch.cuda.max_memory_allocated()
        reserved = torch.cuda.max_memory_reserved()
    else:
        per_step = []
        start = time.perf_counter()
        for i in range(args.steps):
            s = time.perf_counter()
            loss = step(args.warmup + i)
            per_step.append(1e3 * (time.perf_counter() - s))
        total_ms = 1e3 * (time.perf_counter() - start)
        peak = reserved = None
    last_loss = float(loss)
    if first_loss is None:
        first_loss = last_loss

    ms = total_ms / args.steps
    tokens_per_s = b * t / (ms / 1e3)
    result = {
        "workload": name, "mode": mode, "device": device,
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "torch": torch.__version__, "transformers": transformers_version(),
        "batch": b, "seq": t, "vocab": v, "layers": w["layers"], "d_model": w["d_model"],
        "params": total_params, "flop_params": n_params, "flops_per_token": flops,
        "warmup": args.warmup, "steps": args.steps, "warmup_s": round(warmup_s, 3),
        "ms_per_step": round(ms, 3), "ms_per_step_median": round(statistics.median(per_step), 3),
        "tokens_per_s": round(tokens_per_s, 1),
        "tflops": round(tokens_per_s * flops / 1e12, 2),
        "mfu": round(tokens_per_s * flops / (args.peak_tflops * 1e12), 4),
        "peak_tflops": args.peak_tflops,
        "peak_mem_gib": None if peak is None else round(peak / 2**30, 3),
        "peak_reserved_gib": None if reserved is None else round(reserved / 2**30, 3),
        "compile_mode": args.compile_mode if mode == "compile" else None,
        "fused_adamw": fused, "loss_first": round(first_loss, 4), "loss_last": round(last_loss, 4),
        "smoke": bool(args.smoke), "bias": not args.no_bias,
    }
    assert math.isfinite(last_loss), f"{name}/{mode}: loss became {last_loss}"
    del step_model, model, optimizer, batches
    return result


def transformers_version():
    try:
        import transformers
        return transformers.__version__
    except ImportError:
        return None


def free(device):
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    try:
        torch._dynamo.reset()
    except AttributeError:
        pass


# --------------------------------------------------------------------------- report

def table(results):
    head = f"{'workload':<12} {'mode':<8} {'batch':>5} {'seq':>5} {'ms/step':>9} {'tok/s':>10} " \
           f"{'TFLOP/s':>8} {'MFU':>6} {'peak GiB':>9}"
    lines = [head, "-" * len(head)]
    for r in results:
        if "error" in r:
            lines.append(f"{r['workload']:<12} {r['mode']:<8} error: {r['error']}")
            continue
        peak = "-" if r["peak_mem_gib"] is None else f"{r['peak_mem_gib']:.1f}"
        lines.append(f"{r['workload']:<12} {r['mode']:<8} {r['batch']:>5} {r['seq']:>5} "
                     f"{r['ms_per_step']:>9.2f} {r['tokens_per_s'] / 1e3:>9.1f}k "
                     f"{r['tflops']:>8.1f} {100 * r['mfu']:>5.1f}% {peak:>9}")
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="PyTorch training throughput (eager and torch.compile) for fathom's benchmark shapes.")
    p.add_argument("--workloads", default=",".join(WORKLOADS),
                   help=f"comma-separated, among {', '.join(WORKLOADS)}")
    p.add_argument("--modes", default="eager,compile", help="comma-separated, among eager, compile")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 25; smoke 2)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 8; smoke 1)")
    p.add_argument("--batch", type=int, default=None, help="override every workload's batch size")
    p.add_argument("--seq", type=int, default=None, help="override every workload's sequence length")
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="bf16 peak for the MFU column (default 989, H100/H200 SXM dense datasheet)")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto (default: cuda when present)")
    p.add_argument("--json-out", default=None, help="also write the JSON lines to this file")
    p.add_argument("--smoke", action="store_true",
                   help="tiny models, 2 timed steps: checks that the script runs (CPU is fine)")
    p.add_argument("--compile-mode", default="default",
                   help="torch.compile's mode for the compile runs (default, reduce-overhead, "
                        "max-autotune, max-autotune-no-cudagraphs; default: default)")
    p.add_argument("--same-process", action="store_true",
                   help="run every measurement in this process (default: each in a fresh one)")
    p.add_argument("--shape", metavar="WORKLOAD", default=None,
                   help="print the workload's batch and sequence length ('batch seq') and exit")
    p.add_argument("--no-bias", action="store_true",
                   help="gpt2-124m without biases in its linear layers and LayerNorms (nanoGPT's "
                        "train.py default, bias = False; the default here keeps GPT-2's biases, as "
                        "fathom's gpt2 presets have them)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.shape is not None:
        if args.shape not in WORKLOADS:
            p.error(f"unknown workload '{args.shape}': expected one of {', '.join(WORKLOADS)}")
        return args
    args.workloads = [s for s in args.workloads.split(",") if s]
    args.modes = [s for s in args.modes.split(",") if s]
    for wl in args.workloads:
        if wl not in WORKLOADS:
            p.error(f"unknown workload '{wl}': expected one of {', '.join(WORKLOADS)}")
    for m in args.modes:
        if m not in ("eager", "compile"):
            p.error(f"unknown mode '{m}': expected eager or compile")
    if args.steps is None:
        args.steps = 2 if args.smoke else 25
    if args.warmup is None:
        args.warmup = 1 if args.smoke else 8
    if args.steps < 1 or args.warmup < 0:
        p.error("expected --steps >= 1 and --warmup >= 0")
    for flag in ("batch", "seq"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"expected --{flag} >= 1")
    return args


def child_argv(args, name, mode, device):
    """The command line that runs one measurement in a fresh process."""
    argv = [sys.executable, __file__, "--child", "--workloads", name, "--modes", mode,
            "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", device,
            "--peak-tflops", str(args.peak_tflops), "--compile-mode", args.compile_mode]
    if args.batch:
        argv += ["--batch", str(args.batch)]
    if args.seq:
        argv += ["--seq", str(args.seq)]
    if args.smoke:
        argv.append("--smoke")
    if args.no_bias:
        argv.append("--no-bias")
    return argv


def run_isolated(args, name, mode, device):
    """run_one in a fresh Python process: its JSON line, or an error line if it gave none."""
    proc = subprocess.run(child_argv(args, name, mode, device), stdout=subprocess.PIPE, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if lines:
        return json.loads(lines[-1])
    return {"workload": name, "mode": mode, "device": device,
            "error": f"the measuring process exited with status {proc.returncode} and no result"}


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.shape is not None:
        w = WORKLOADS[args.shape]
        print(w["batch"], w["seq"])
        return 0
    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        print("torch_baseline: --device cuda but torch sees no GPU", file=sys.stderr)
        return 2
    if device == "cpu" and not args.smoke:
        print("torch_baseline: no GPU: the full shapes would take hours on a CPU; use --smoke",
              file=sys.stderr)
        return 2
    # bf16 autocast does the GEMMs; what stays fp32 may use TF32, as a tuned PyTorch run would.
    torch.set_float32_matmul_precision("high")

    results, failed = [], False
    out = open(args.json_out, "w", encoding="utf-8") if args.json_out else None
    try:
        for name in args.workloads:
            for mode in args.modes:
                if args.child or args.same_process:
                    try:
                        r = run_one(name, mode, args, device)
                    except Exception as e:  # report and go on with the next measurement
                        r = {"workload": name, "mode": mode, "device": device,
                             "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]}
                    free(device)
                else:
                    r = run_isolated(args, name, mode, device)
                failed = failed or "error" in r
                results.append(r)
                line = json.dumps(r)
                print(line, flush=True)
                if out:
                    out.write(line + "\n")
                    out.flush()
    finally:
        if out:
            out.close()
    if not args.child:
        print()
        print(table(results))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
