"""Forward + backward step of Libra against two baselines measured in the same run (issue #2, "Must show" 4).

    python perf/train_step.py                    # CPU: small config (hidden 512, 8 layers), fp32
    python perf/train_step.py --device cuda      # GPU: LLaMA-2-7B dimensions with 4 layers, bf16
    python perf/train_step.py --shapes b --steps 1   # quick look at one shape

Models, all with every parameter trainable, timed on the same batches:
  ours   LibraForCausalLM, `return_logits=False` (split loss, SDPA bridge attention, sorted routing)
  naive  the same parameters run with the official algorithm (perf/naive_libra.py): boolean routing,
         materialised bridge score matrices, loss over the concatenated (K, B, N, V + VV) logits
  llama  transformers' LlamaForCausalLM with SDPA attention and the same dimensions (the cost floor)
Shapes: (a) batch 8, N = 650 (bos + 578 image + 71 text); (b) batch 2, N = 2048 (bos + 578 image + 1469
text). Each (model, shape) runs in its own subprocess so that peak memory is measured cleanly: on a GPU
the peak allocated during the step minus what parameters and gradients hold before it (activation
memory), on the CPU the growth of the peak resident set over the same baseline. "saved" is the size of
the tensors autograd keeps for the backward pass (parameters excluded), which is device-independent.
MFU (GPU) counts model FLOPs: 6 x path parameters per token + causal attention, over the bf16 peak.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {"a": (8, 650), "b": (2, 2048)}  # (batch, N): one image of 578 tokens after bos, the rest text
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def build_config(args):
    from libra.model import LibraConfig

    if args.device == "cpu":
        dims = dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8)
    else:
        dims = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=4, num_attention_heads=32)
    return LibraConfig(**dims, max_position_embeddings=4096)


def make_batch(cfg, batch: int, n: int, device, dtype, seed: int = 0) -> dict:
    """bos, one image (boi, codes, eoi), then text; labels as the training wrapper masks them."""
    import torch

    g = torch.Generator().manual_seed(seed)
    K, V, M = cfg.vision_codebook_num, cfg.vocab_size, cfg.max_vision_token_length
    ids = torch.randint(3, V, (batch, n), generator=g).repeat(K, 1, 1)
    vis = torch.full((batch, n), M)
    codes = torch.randint(0, cfg.vision_vocab_size - 2, (K, batch, M - 2), generator=g) + V
    ids[:, :, 0] = cfg.bos_token_id
    ids[:, :, 1] = cfg.boi_token_id
    ids[:, :, 2:M] = codes
    ids[:, :, M] = cfg.eoi_token_id
    vis[:, 1 : M + 1] = torch.arange(M)
    signal = torch.zeros(batch, n, cfg.contiguous_signal_size)
    signal[:, 2:M] = torch.randn(batch, M - 2, cfg.contiguous_signal_size, generator=g)
    labels = ids.clone()
    labels[:, :, :2] = -100  # bos and boi
    labels[:, :, M + 1] = -100  # first text token after eoi: an image row cannot predict it
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones(batch, n, dtype=torch.long, device=device),
        "vision_indices": vis.to(device),
        "contiguous_signal": signal.to(device=device, dtype=dtype),
        "labels": labels.to(device),
    }


def build_model(name: str, cfg, device, dtype):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from libra.model import LibraForCausalLM

    torch.manual_seed(0)
    if name == "llama":
        llama = LlamaConfig(
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_attention_heads,
            max_position_embeddings=cfg.max_position_embeddings,
            rms_norm_eps=cfg.rms_norm_eps,
        )
        llama._attn_implementation = "sdpa"
        with torch.device(device):
            model = LlamaForCausalLM(llama)
    else:
        with torch.device(device):
            model = LibraForCausalLM(cfg)
    return model.to(dtype).train()


def step_fn(name, model, batch):
    if name == "ours":
        return lambda: model(**batch, use_cache=False, return_logits=False).loss
    if name == "naive":
        from perf.naive_libra import naive_loss

        return lambda: naive_loss(model, **batch)
    ids, labels = batch["input_ids"][0], batch["labels"][0].clone()
    labels[ids >= model.config.vocab_size] = -100
    ids = ids.clamp(max=model.config.vocab_size - 1)  # llama reads the image slots as text tokens
    return lambda: model(input_ids=ids, labels=labels, use_cache=False).loss


def model_flops_per_step(name, cfg, batch, n) -> float:
    """6 x parameters on each token's path + causal attention (QK and AV, fwd + bwd), per step."""
    C, inner, L, r = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vision_down_ratio
    text_layer = 4 * C * C + 3 * C * inner
    attention = 6 * C * n * L  # per token: 2 matmuls x 2 flops x C x n/2 keys, x3 for fwd + bwd
    n_image = cfg.max_vision_token_length
    if name == "llama":
        return batch * n * (6 * (text_layer * L + C * cfg.vocab_size) + attention)
    bridge = 2 * 2 * C * cfg.bridge_rank
    vision_layer = 4 * 2 * C * C // r + 2 * 2 * C * inner // r + (inner + C) * C // r + bridge
    text_tokens = 6 * ((text_layer + bridge) * L + C * cfg.vocab_size)
    image_tokens = 6 * (vision_layer * L + cfg.vision_codebook_num * C * cfg.vision_vocab_size)
    image_tokens += 6 * (C + cfg.contiguous_signal_size) * C
    return batch * ((n - n_image) * text_tokens + n_image * image_tokens + n * attention)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(args) -> dict:
    """One (model, shape): warm-up step, then timed steps; returns the figures as a dict."""
    import torch

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    cfg = build_config(args)
    batch_size, n = SHAPES[args.shape]
    model = build_model(args.worker, cfg, device, dtype)
    for p in model.parameters():  # gradients allocated up front: the memory figure is activations only
        p.grad = torch.zeros_like(p)
    batch = make_batch(cfg, batch_size, n, device, dtype)
    run = step_fn(args.worker, model, batch)
    params = {p.data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss_bytes()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = run()
    loss.backward()
    saved_bytes = sum(saved.values())
    del loss
    times = []
    for _ in range(args.steps):
        sync()
        start = time.perf_counter()
        run().backward()
        sync()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    step = min(times)
    result = {
        "step_s": step,
        "tokens_per_s": batch_size * n / step,
        "peak_bytes": peak,
        "saved_bytes": saved_bytes,
    }
    result["flops"] = model_flops_per_step(args.worker, cfg, batch_size, n)
    if device.type == "cuda":
        name = torch.cuda.get_device_name()
        peak_tflops = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        result["mfu"] = result["flops"] / step / (peak_tflops * 1e12) if peak_tflops else None
        result["device"] = name
    return result


def check_same_loss(args) -> float:
    """Our loss and the naive loss on one small batch: both must compute the same function."""
    import torch

    from perf.naive_libra import naive_loss

    torch.set_num_threads(args.threads)
    cfg = build_config(args)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    model = build_model("ours", cfg, args.device, dtype)
    with torch.no_grad():  # switch the bridges on (they start at zero) so that they are compared too
        for name, p in model.named_parameters():
            if "bridge" in name:
                p.normal_(0.0, 0.02)
    batch = make_batch(cfg, 1, 650, args.device, dtype, seed=1)
    with torch.no_grad():
        ours = model(**batch, use_cache=False, return_logits=False).loss
        naive = naive_loss(model, **batch)
    return abs(ours.item() - naive.item())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], help="default: fp32 on cpu, bf16 on cuda")
    parser.add_argument("--shapes", default="ab", help="which of the shapes a, b to run")
    parser.add_argument("--models", default="ours,naive,llama")
    parser.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up (best is kept)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.dtype = args.dtype or ("fp32" if args.device == "cpu" else "bf16")
    if args.worker:
        print(json.dumps(worker(args)))
        return

    cfg = build_config(args)
    dims = {
        k: getattr(cfg, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size")
    }
    print(f"device {args.device}, dtype {args.dtype}, {dims}")
    print(f"loss |ours - naive| on a 650-token batch: {check_same_loss(args):.2e}")
    for shape in args.shapes:
        batch_size, n = SHAPES[shape]
        results = {}
        for name in args.models.split(","):
            cmd = [sys.executable, __file__, "--worker", name, "--shape", shape, "--device", args.device]
            cmd += ["--dtype", args.dtype, "--steps", str(args.steps), "--threads", str(args.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                print(f"{name} failed on shape {shape}:\n{done.stderr[-2000:]}")
                continue
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"\nshape ({shape}): batch {batch_size}, N {n}")
        print(f"{'model':<7}{'step s':>9}{'tokens/s':>11}{'peak MiB':>10}{'saved MiB':>11}{'MFU':>7}")
        for name, r in results.items():
            mfu = f"{r['mfu']:.1%}" if r.get("mfu") else "n/a"
            print(
                f"{name:<7}{r['step_s']:>9.3f}{r['tokens_per_s']:>11.0f}{r['peak_bytes'] / 2**20:>10.0f}"
                f"{r['saved_bytes'] / 2**20:>11.0f}{mfu:>7}"
            )
        ours = results.get("ours")
        for base in ("naive", "llama"):
            if ours and base in results:
                r = results[base]
                print(
                    f"ours vs {base}: tokens/s x{ours['tokens_per_s'] / r['tokens_per_s']:.2f}, "
                    f"step time x{ours['step_s'] / r['step_s']:.2f}, "
                    f"peak memory x{ours['peak_bytes'] / max(r['peak_bytes'], 1):.2f}, "
                    f"saved activations x{ours['saved_bytes'] / max(r['saved_bytes'], 1):.2f}"
                )


if __name__ == "__main__":
    main()
