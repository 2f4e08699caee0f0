"""Prefill time and decode speed of Libra against transformers' LLaMA, same run.

    python perf/decode.py                   # CPU: small config (hidden 512, 8 layers), fp32
    python perf/decode.py --device cuda     # GPU: full 11B dimensions (LLaMA-2-7B + expert, 32 layers), bf16
    python perf/decode.py --variants ours,llama --repeats 1   # quick look, no compilation
    python perf/decode.py --dims tiny --json out.json         # seconds: does it run
    python perf/decode.py --variants ours,llama --operators   # + operators per decoding step (exact)

Prompt: bos + one image (578 tokens) + newline + 30 text tokens = 610 positions, at batch 1 and 8;
64 new text tokens, greedy, KV cache. Variants:
  ours           Libra's `generate` (libra/model/generation.py), dynamic cache, eager
  ours-static    the same with `cache_implementation="static"` (fixed-length cache, `decoding_step`)
  ours-compiled  the same with `compile=True` (torch.compile of the decoding step; CUDA graphs on a GPU)
  llama          `LlamaForCausalLM` (SDPA, same dimensions, the image slots read as text ids) with
                 transformers' `generate`
Prefill = one forward over the prompt that fills the cache and returns the last logits. Decode
tokens/s = batch x 63 / (time of a 64-token generate - time of a 1-token generate), so the prefill is not
counted. Each variant is warmed up with a full generate (compilation happens there), then measured in
`--repeats` rounds, the variants one after the other within a round; figures are median [min - max] over
the rounds and ratios to LLaMA are formed round by round (perf/timing.py). The KV cache figure is the
bytes Libra's cache holds after a generate against a LLaMA cache of the same positions. Weights are
random (seeded): speed does not depend on them, and eos is disabled so every run decodes all 64 tokens.
`--operators` also counts the operators (torch.profiler events) of one eager decoding step: the host's
work per step, which bounds small-batch decoding, and a figure that does not move with the machine's load.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perf.timing import Spread, ratios, time_calls  # noqa: E402
from perf.train_step import build_model  # noqa: E402

NEW_TOKENS = 64
DIMS = {
    "tiny": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4),
    "small": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8),
    "11b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32),
}
LIBRA_VARIANTS = {
    "ours": {},
    "ours-static": {"cache_implementation": "static"},
    "ours-compiled": {"compile": True},
}


def build_config(dims: str):
    from libra.model import LibraConfig

    extra = {"contiguous_signal_size": 64, "vocab_size": 1024} if dims == "tiny" else {}
    return LibraConfig(**DIMS[dims], **extra, max_position_embeddings=4096)


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


def runners(name: str, model, prompt: dict):
    """(prefill(), generate(n)) of one variant."""
    if name in LIBRA_VARIANTS:
        options = LIBRA_VARIANTS[name]

        def prefill():
            model(**prompt, use_cache=True, last_logits_only=True)

        def generate(n):
            return model.generate(**prompt, max_new_tokens=n, do_sample=False, eos_token_id=-1, **options)

        return prefill, generate
    ids = prompt["input_ids"][0].clamp(max=model.config.vocab_size - 1)
    mask = prompt["attention_mask"]
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0

    def prefill():
        model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1)

    def generate(n):
        return model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False
        )

    return prefill, generate


@torch.no_grad()
def operators_per_step(generate) -> float:
    """Profiler events of one decoding step: those of a 9-token generate less those of a 1-token one
    (the prompt's forward and the loop's setup), over the 8 steps between them."""
    from torch.profiler import ProfilerActivity, profile

    def events(n: int) -> int:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            generate(n)
        return sum(e.count for e in prof.key_averages())

    return (events(9) - events(1)) / 8


@torch.no_grad()
def cache_bytes(name: str, model, prompt: dict) -> dict | None:
    """Bytes of Libra's KV cache after a full generate, and of a LLaMA cache over the same positions."""
    if name not in LIBRA_VARIANTS:
        return None
    out = model.generate(
        **prompt, max_new_tokens=NEW_TOKENS, eos_token_id=-1, return_dict_in_generate=True,
        **LIBRA_VARIANTS[name],
    )  # fmt: skip
    cfg, cache = model.config, out.cache
    positions = cache.max_length if cache.is_static else prompt["input_ids"].shape[-1] + NEW_TOKENS
    batch = prompt["attention_mask"].shape[0]
    element = next(model.parameters()).element_size()
    llama = 2 * cfg.num_hidden_layers * batch * positions * cfg.hidden_size * element  # keys + values
    return {"bytes": cache.nbytes(), "llama_bytes": llama, "ratio": cache.nbytes() / llama}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], help="default: fp32 on cpu, bf16 on cuda")
    parser.add_argument("--dims", choices=sorted(DIMS), help="default: small on cpu, 11b on cuda")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument(
        "--variants", default="ours,ours-compiled,llama", help=", ".join([*LIBRA_VARIANTS, "llama"])
    )
    parser.add_argument("--repeats", type=int, default=3, help="rounds; figures are median [range] over them")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--operators", action="store_true", help="count the operators of a decoding step")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype_name = args.dtype or ("fp32" if device.type == "cpu" else "bf16")
    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    cfg = build_config(args.dims or ("small" if device.type == "cpu" else "11b"))
    dims = {
        k: getattr(cfg, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size")
    }
    print(f"device {device}, dtype {dtype}, threads {args.threads}, {dims}")
    variants = args.variants.split(",")
    batches = [int(b) for b in args.batches.split(",")]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    models = {}
    if any(v in LIBRA_VARIANTS for v in variants):
        models["ours"] = build_model("ours", cfg, device, dtype).eval()
    if "llama" in variants:
        models["llama"] = build_model("llama", cfg, device, dtype).eval()
    prompts = {b: make_prompt(cfg, b, device, dtype) for b in batches}
    run = {}
    with torch.no_grad():
        for name in variants:
            model = models["llama" if name == "llama" else "ours"]
            for b in batches:
                run[name, b] = runners(name, model, prompts[b])
                run[name, b][1](NEW_TOKENS)  # warm-up: the same lengths as measured (compiles once)
        rounds = {key: {"prefill_s": [], "decode_tokens_per_s": []} for key in run}
        for _ in range(args.repeats):
            for (name, b), (prefill, generate) in run.items():
                rounds[name, b]["prefill_s"] += time_calls(prefill, 1, sync).values
                one = time_calls(lambda: generate(1), 1, sync).median  # noqa: B023
                full = time_calls(lambda: generate(NEW_TOKENS), 1, sync).median  # noqa: B023
                rounds[name, b]["decode_tokens_per_s"].append(b * (NEW_TOKENS - 1) / (full - one))
        caches = {(name, b): cache_bytes(name, models["ours"], prompts[b]) for name, b in run}
        operators = {}
        if args.operators:  # eager variants only: a compiled step's work is not in aten operators
            operators = {key: operators_per_step(run[key][1]) for key in run if key[0] in ("ours", "llama")}

    print(f"\n{args.repeats} rounds; median [min - max]")
    print(f"{'variant':<15}{'batch':>6}{'prefill s':>26}{'decode tokens/s':>28}{'KV cache vs llama':>19}")
    results = {}
    for (name, b), r in rounds.items():
        prefill, speed = Spread(r["prefill_s"]), Spread(r["decode_tokens_per_s"])
        cache = caches[name, b]
        results[f"{name}/batch{b}"] = {
            "variant": name,
            "batch": b,
            "prefill_s": prefill.as_dict(),
            "decode_tokens_per_s": speed.as_dict(),
            "kv_cache": cache,
        }
        if (name, b) in operators:
            results[f"{name}/batch{b}"]["operators_per_step"] = operators[name, b]
        shown = f"x{cache['ratio']:.2f}" if cache else ""
        print(f"{name:<15}{b:>6}{prefill.format():>26}{speed.format(1):>28}{shown:>19}")
    if "llama" in variants:
        for name in variants:
            if name == "llama":
                continue
            for b in batches:
                speed = ratios(
                    rounds[name, b]["decode_tokens_per_s"], rounds["llama", b]["decode_tokens_per_s"]
                )
                prefill = ratios(rounds[name, b]["prefill_s"], rounds["llama", b]["prefill_s"])
                results[f"{name}/batch{b}"]["vs_llama"] = {
                    "decode_tokens_per_s": speed.as_dict(),
                    "prefill_time": prefill.as_dict(),
                }
                print(
                    f"batch {b}: {name} / llama decode tokens/s x{speed.format(2)}, "
                    f"prefill time x{prefill.format(2)}"
                )
    for (name, b), count in operators.items():
        print(f"batch {b}: {name} runs {count:.0f} operators per decoding step")
    if args.json:
        record = {"device": str(device), "dtype": dtype_name, "threads": args.threads, "dims": dims}
        record.update(repeats=args.repeats, new_tokens=NEW_TOKENS, results=results)
        Path(args.json).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
