#!/usr/bin/env python3
"""Check a fathom checkpoint against Hugging Face transformers: same tokens in, same logits out.

fathom writes its checkpoints in the Hugging Face layout (config.json + model.safetensors), so
transformers loads them with from_pretrained on the local folder. This script loads one, runs the
tokens that fathom ran, and compares the logits with fathom's.

Files (the formats fathom writes; DIR is the checkpoint folder unless --input says otherwise):

  DIR/config.json                 LlamaConfig or GPT2Config fields (model_type "llama" or "gpt2"),
                                  plus fathom's own fields under "fathom" (ignored here).
  DIR/model.safetensors           the weights under Hugging Face names, metadata {"format": "pt"}.
  DIR/compare_input.json          {"tokens": [[t00, t01, ...], [t10, ...], ...],
                                   "logits_file": "compare_logits.safetensors"}
                                  tokens: B rows of T token ids each (B, T >= 1, ids < vocab_size);
                                  logits_file: optional, relative to this JSON file's folder
                                  (absolute paths work too); the default is the name shown.
  DIR/compare_logits.safetensors  one tensor "logits", dtype F32 (or BF16/F64), shape (B, T, V):
                                  fathom's logits for those tokens, V = vocab_size.

The model runs in float32 with TF32 off, eager attention, no dropout (eval mode). The report gives
the largest absolute difference (and where), the mean absolute difference, the largest |logit|
for scale, and how often the two argmaxes agree. The exit status is 0 when the largest absolute
difference is at most --tol, 1 when above, 2 when the inputs are unusable (missing file, wrong
shape, weights that transformers did not load completely).

Needs torch, transformers and safetensors; never downloads anything (local_files_only).

Examples:
  python3 scripts/hf_compare.py runs/llama/ckpt-100
  python3 scripts/hf_compare.py runs/gpt2/ckpt-50 --tol 5e-4 --device cuda --json
"""

import argparse
import json
import os
import sys


class CompareError(Exception):
    """An unusable input: reported as one line, exit status 2."""


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Load a fathom checkpoint in transformers and compare its logits with fathom's.",
        epilog="See the module docstring (python3 -m pydoc scripts/hf_compare.py) for the file formats.",
    )
    p.add_argument("checkpoint", help="checkpoint folder holding config.json and model.safetensors")
    p.add_argument("--input", default=None,
                   help="compare_input.json (default: CHECKPOINT/compare_input.json)")
    p.add_argument("--logits", default=None,
                   help="fathom's logits file; overrides logits_file of the input JSON")
    p.add_argument("--tol", type=float, default=1e-3,
                   help="largest absolute logit difference that passes (default 1e-3)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
    p.add_argument("--attn", default="eager", choices=["eager", "sdpa"],
                   help="transformers attention implementation (default eager)")
    p.add_argument("--json", action="store_true", help="also print the result as one JSON line")
    return p.parse_args(argv)


def read_json(path, what):
    if not os.path.isfile(path):
        raise CompareError(f"expected {what} at '{path}', found nothing there")
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CompareError(f"expected valid JSON in '{path}', got: {e}") from None


def read_tokens(input_path):
    spec = read_json(input_path, "the compare input (tokens)")
    if not isinstance(spec, dict) or "tokens" not in spec:
        raise CompareError(f"'{input_path}': expected an object with a 'tokens' field")
    rows = spec["tokens"]
    if (not isinstance(rows, list) or not rows
            or not all(isinstance(r, list) and r for r in rows)):
        raise CompareError(f"'{input_path}': expected 'tokens' as a non-empty list of non-empty lists")
    width = len(rows[0])
    if any(len(r) != width for r in rows):
        raise CompareError(f"'{input_path}': expected every token row to have {width} ids, got "
                           f"lengths {sorted({len(r) for r in rows})}")
    if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for r in rows for t in r):
        raise CompareError(f"'{input_path}': expected non-negative integer token ids")
    logits_name = spec.get("logits_file", "compare_logits.safetensors")
    logits_path = os.path.join(os.path.dirname(os.path.abspath(input_path)), logits_name)
    return rows, logits_path


def load_model(checkpoint, device, attn):
    import torch
    import transformers

    config = read_json(os.path.join(checkpoint, "config.json"), "the checkpoint's config.json")
    classes = {"llama": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel"}
    model_type = config.get("model_type")
    if model_type not in classes:
        raise CompareError(f"'{checkpoint}/config.json': expected model_type among "
                           f"{', '.join(classes)}, got {model_type!r}")
    weights = os.path.join(checkpoint, "model.safetensors")
    if not os.path.isfile(weights):
        raise CompareError(f"expected the weights at '{weights}', found nothing there")
    cls = getattr(transformers, classes[model_type])
    model, info = cls.from_pretrained(
        checkpoint, local_files_only=True, dtype=torch.float32, attn_implementation=attn,
        output_loading_info=True)
    problems = {k: v for k, v in info.items() if k in
                ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if problems:
        detail = "; ".join(f"{k}: {sorted(map(str, v))[:8]}" for k, v in problems.items())
        raise CompareError(f"'{weights}': transformers did not load every weight ({detail})")
    return model.to(device).eval(), config, classes[model_type]


def compare(args):
    import torch
    from safetensors import safe_open

    checkpoint = args.checkpoint
    if not os.path.isdir(checkpoint):
        raise CompareError(f"expected a checkpoint folder at '{checkpoint}', found none")
    input_path = args.input or os.path.join(checkpoint, "compare_input.json")
    rows, logits_path = read_tokens(input_path)
    if args.logits:
        logits_path = args.logits

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    # Compare in true fp32: TF32 matmuls would differ from fathom's fp32 by ~1e-3 relative.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    model, config, class_name = load_model(checkpoint, device, args.attn)
    vocab = model.config.vocab_size
    if max(t for r in rows for t in r) >= vocab:
        raise CompareError(f"'{input_path}': expected token ids < vocab_size {vocab}, got "
                           f"{max(t for r in rows for t in r)}")

    if not os.path.isfile(logits_path):
        raise CompareError(f"expected fathom's logits at '{logits_path}', found nothing there")
    with safe_open(logits_path, framework="pt") as f:
        if "logits" not in f.keys():
            raise CompareError(f"'{logits_path}': expected a tensor named 'logits', got "
                               f"{sorted(f.keys())}")
        theirs = f.get_tensor("logits").to(torch.float32)
    batch, length = len(rows), len(rows[0])
    if tuple(theirs.shape) != (batch, length, vocab):
        raise CompareError(f"'{logits_path}': expected logits of shape ({batch}, {length}, {vocab}), "
                           f"got {tuple(theirs.shape)}")

    tokens = torch.tensor(rows, dtype=torch.long, device=device)
    with torch.no_grad():
        ours = model(input_ids=tokens).logits.to(torch.float32).cpu()

    diff = (ours - theirs).abs()
    flat = int(diff.argmax())
    where = (flat // (length * vocab), (flat // vocab) % length, flat % vocab)
    result = {
        "checkpoint": checkpoint,
        "model": class_name,
        "device": device,
        "batch": batch,
        "seq": length,
        "vocab": vocab,
        "max_abs_diff": float(diff.max()),
        "at": list(where),
        "mean_abs_diff": float(diff.mean()),
        "max_abs_logit": float(ours.abs().max()),
        "argmax_agreement": float((ours.argmax(-1) == theirs.argmax(-1)).float().mean()),
        "tol": args.tol,
    }
    result["pass"] = bool(result["max_abs_diff"] <= args.tol)
    return result


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        r = compare(args)
    except CompareError as e:
        print(f"hf_compare: {e}", file=sys.stderr)
        return 2
    except ImportError as e:
        print(f"hf_compare: needs torch, transformers and safetensors ({e})", file=sys.stderr)
        return 2
    print(f"{r['model']} from {r['checkpoint']} on {r['device']}: tokens ({r['batch']}, {r['seq']}), "
          f"vocab {r['vocab']}")
    print(f"  largest |transformers - fathom| = {r['max_abs_diff']:.3e} at (b, t, v) = "
          f"{tuple(r['at'])}; mean {r['mean_abs_diff']:.3e}; largest |logit| {r['max_abs_logit']:.3f}")
    print(f"  argmax agreement {100 * r['argmax_agreement']:.2f}%; tolerance {r['tol']:.1e}: "
          f"{'PASS' if r['pass'] else 'FAIL'}")
    if args.json:
        print(json.dumps(r))
    return 0 if r["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
