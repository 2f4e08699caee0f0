"""Prefill time and decode speed of Libra against transformers' LLaMA, same run (issue #2, "Must show" 5).

    python perf/decode.py                   # CPU: small config (hidden 512, 8 layers), fp32
    python perf/decode.py --device cuda     # GPU: full LLaMA-2-7B dimensions (32 layers), bf16

Prompt: bos + one image (578 tokens) + newline + 30 text tokens = 610 positions, at batch 1 and 8;
64 new text tokens, greedy, KV cache. Libra runs its own `generate` (libra/model/generation.py), LLaMA
(`LlamaForCausalLM`, SDPA, same dimensions, the image slots read as text ids) runs transformers'
`generate`. Prefill = one forward over the prompt that fills the cache and returns the last logits.
Decode tokens/s = batch x 63 / (time of a 64-token generate - time of a 1-token generate), so the
prefill is not counted. Each figure is the best of `--repeats` runs. Weights are random (seeded):
speed does not depend on them, and eos is disabled so every run decodes all 64 tokens.
"""

import argparse
import gc
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perf.train_step import build_model  # noqa: E402

NEW_TOKENS = 64


def build_config(device: str):
    from libra.model import LibraConfig

    if device == "cpu":
        dims = dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8)
    else:
        dims = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32)
    return LibraConfig(**dims, max_position_embeddings=4096)


def make_prompt(cfg, batch: int, device, dtype) -> dict:
    """bos, boi, 576 codes, eoi, newline, 30 text tokens (610 positions)."""
    g = torch.Generator().manual_seed(0)
    K, V, M = cfg.vision_codebook_num, cfg.vocab_size, cfg.max_vision_token_length
    n = 1 + M + 1 + 30
    ids = torch.randint(3, V, (batch, n), generator=g).repeat(K, 1, 1)
    ids[:, :, 0] = cfg.bos_token_id
    ids[:, :, 1] = cfg.boi_token_id
    ids[:, :, 2:M] = torch.randint(0, cfg.vision_vocab_size - 2, (K, batch, M - 2), generator=g) + V
    ids[:, :, M] = cfg.eoi_token_id
    ids[:, :, M + 1] = cfg.newline_token_id
    vis = torch.full((batch, n), M)
    vis[:, 1 : M + 1] = torch.arange(M)
    signal = torch.zeros(batch, n, cfg.contiguous_signal_size)
    signal[:, 2:M] = torch.randn(batch, M - 2, cfg.contiguous_signal_size, generator=g)
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones(batch, n, dtype=torch.long, device=device),
        "vision_indices": vis.to(device),
        "contiguous_signal": signal.to(device=device, dtype=dtype),
    }


def best_time(fn, repeats: int, device) -> float:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


@torch.no_grad()
def measure(name: str, model, prompt: dict, repeats: int, device) -> dict:
    batch = prompt["attention_mask"].shape[0]
    if name == "ours":

        def prefill():
            model(**prompt, use_cache=True, last_logits_only=True)

        def generate(n):
            model.generate(**prompt, max_new_tokens=n, do_sample=False, eos_token_id=-1)

    else:
        ids = prompt["input_ids"][0].clamp(max=model.config.vocab_size - 1)
        mask = prompt["attention_mask"]
        model.generation_config.eos_token_id = None
        model.generation_config.pad_token_id = 0

        def prefill():
            model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1)

        def generate(n):
            model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False
            )

    generate(2)  # warm-up
    prefill_s = best_time(prefill, repeats, device)
    one = best_time(lambda: generate(1), repeats, device)
    full = best_time(lambda: generate(NEW_TOKENS), repeats, device)
    return {"prefill_s": prefill_s, "decode_tokens_per_s": batch * (NEW_TOKENS - 1) / (full - one)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], help="default: fp32 on cpu, bf16 on cuda")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = (
        torch.bfloat16
        if (args.dtype or ("fp32" if args.device == "cpu" else "bf16")) == "bf16"
        else torch.float32
    )
    cfg = build_config(args.device)
    dims = {
        k: getattr(cfg, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size")
    }
    print(f"device {device}, dtype {dtype}, {dims}")
    results = {}
    for name in ("ours", "llama"):
        model = build_model(name, cfg, device, dtype).eval()
        for batch in map(int, args.batches.split(",")):
            results[name, batch] = measure(
                name, model, make_prompt(cfg, batch, device, dtype), args.repeats, device
            )
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"\n{'model':<7}{'batch':>6}{'prefill s':>11}{'decode tok/s':>14}")
    for (name, batch), r in results.items():
        print(f"{name:<7}{batch:>6}{r['prefill_s']:>11.3f}{r['decode_tokens_per_s']:>14.1f}")
    for batch in map(int, args.batches.split(",")):
        ours, llama = results["ours", batch], results["llama", batch]
        speed = ours["decode_tokens_per_s"] / llama["decode_tokens_per_s"]
        prefill = ours["prefill_s"] / llama["prefill_s"]
        print(f"batch {batch}: ours / llama decode tokens/s x{speed:.2f}, prefill time x{prefill:.2f}")


if __name__ == "__main__":
    main()
