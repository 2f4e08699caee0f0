"""Forward + backward step of Libra against two baselines measured in the same run.

    python perf/train_step.py                    # CPU: small config (hidden 512, 8 layers), fp32
    python perf/train_step.py --device cuda      # GPU: LLaMA-2-7B dimensions with 4 layers, bf16
    python perf/train_step.py --shapes b --repeats 1 --steps 1   # quick look at one shape
    python perf/train_step.py --dims tiny --isolate no --json out.json   # seconds: does it run

Models, all with every parameter trainable, timed on the same batches:
  ours   LibraForCausalLM, `return_logits=False` (split loss, SDPA bridge attention, sorted routing)
  naive  the same parameters run with the official algorithm (perf/naive_libra.py): boolean routing,
         materialised bridge score matrices, loss over the concatenated (K, B, N, V + VV) logits
  llama  transformers' LlamaForCausalLM with SDPA attention and the same dimensions (the cost floor)
Shapes: (a) batch 8, N = 650 (bos + 578 image + 71 text); (b) batch 2, N = 2048 (bos + 578 image + 1469
text). The models are measured in `--repeats` rounds, one after the other within a round; a round's
figure is the median of its `--steps` timed steps (after one warm-up step). Every figure is printed as
median [min - max] over the rounds, and the ratios to a baseline are formed round by round (see
perf/timing.py). On the CPU each (model, shape, round) runs in its own subprocess so that peak memory is
measured cleanly (`--isolate`): the growth of the peak resident set over the parameters and gradients.
On a GPU everything runs in one process and peak memory is the peak allocated during the step minus what
was allocated before it (activation memory). "saved" is the size of the tensors autograd keeps for the
backward pass (parameters excluded), which is device-independent. MFU (GPU) counts the FLOPs of the path
each token takes (libra/model/flops.py) over the bf16 peak of the device.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perf.timing import Spread, ratios, time_calls  # noqa: E402

SHAPES = {"a": (8, 650), "b": (2, 2048)}  # (batch, N): one image of 578 tokens after bos, the rest text
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
DIMS = {
    "tiny": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4),
    "small": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8),
    "7b-4layers": dict(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=4, num_attention_heads=32
    ),
}


def build_config(dims: str):
    from libra.model import LibraConfig

    extra = {"contiguous_signal_size": 64, "vocab_size": 1024} if dims == "tiny" else {}
    return LibraConfig(**DIMS[dims], **extra, max_position_embeddings=4096)


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
    """Training FLOPs of one step on the path each token takes (libra/model/flops.py). LLaMA is the
    text path alone: it reads the image slots as text tokens and has no bridge."""
    from libra.model.flops import causal_pairs, training_flops

    n_image = 0 if name == "llama" else cfg.max_vision_token_length
    pairs = causal_pairs([n] * batch)
    return training_flops(cfg, batch * (n - n_image), batch * n_image, pairs)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class MemoryProbe:
    """What one step holds: `saved_tensors()` counts the bytes autograd keeps for backward (parameters
    excluded) inside its block; `start()` / `peak()` bracket the step's peak memory (GPU: allocated;
    CPU: resident set, only when this process holds nothing else, `isolated`)."""

    def __init__(self, model, device, isolated: bool):
        self.params = {p.data_ptr() for p in model.parameters()}
        self.device, self.isolated = device, isolated
        self.saved: dict[int, int] = {}
        self.base = 0

    def sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def saved_tensors(self):
        import torch

        def pack(t):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in self.params:
                self.saved[ptr] = t.untyped_storage().nbytes()
            return t

        return torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)

    @property
    def saved_bytes(self) -> int:
        return sum(self.saved.values())

    def start(self) -> None:
        import torch

        self.sync()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = rss_bytes()

    def peak(self) -> int | None:
        import torch

        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated() - self.base
        if self.isolated:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.base
        return None


def measure(name, model, batch, device, steps: int, isolated: bool) -> dict:
    """One round of one (model, shape): a warm-up step (also counts the saved tensors), then `steps`
    timed steps. Peak memory on the CPU only when this process holds nothing else (`isolated`)."""
    run = step_fn(name, model, batch)
    probe = MemoryProbe(model, device, isolated)
    probe.start()
    with probe.saved_tensors():
        loss = run()
    loss.backward()
    del loss
    times = time_calls(lambda: run().backward(), steps, probe.sync).values
    return {"step_s": statistics.median(times), "peak_bytes": probe.peak(), "saved_bytes": probe.saved_bytes}


def prepare(name, cfg, device, dtype):
    import torch

    model = build_model(name, cfg, device, dtype)
    for p in model.parameters():  # gradients allocated up front: the memory figure is activations only
        p.grad = torch.zeros_like(p)
    return model


def worker(args) -> dict:
    """One (model, shape, round) in a process of its own."""
    import torch

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    cfg = build_config(args.dims)
    batch_size, n = SHAPES[args.shape]
    model = prepare(args.worker, cfg, device, dtype)
    batch = make_batch(cfg, batch_size, n, device, dtype)
    return measure(args.worker, model, batch, device, args.steps, isolated=True)


def check_same_loss(args) -> float:
    """Our loss and the naive loss on one small batch: both must compute the same function."""
    import torch

    from perf.naive_libra import naive_loss

    torch.set_num_threads(args.threads)
    cfg = build_config(args.dims)
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


def run_rounds(args, names: list[str]) -> dict:
    """{shape: {model: [one result per round]}}, models interleaved within each round."""
    import torch

    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    isolate = args.isolate == "yes" or (args.isolate == "auto" and device.type == "cpu")
    cfg = build_config(args.dims)
    results = {shape: {name: [] for name in names} for shape in args.shapes}
    models = {}
    if not isolate:
        torch.set_num_threads(args.threads)
        for name in names:  # naive runs on the parameters of ours: one model serves both
            models[name] = models.get("ours") if name == "naive" and "ours" in models else None
            models[name] = models[name] or prepare("ours" if name == "naive" else name, cfg, device, dtype)
    for shape in args.shapes:
        batch_size, n = SHAPES[shape]
        batch = None if isolate else make_batch(cfg, batch_size, n, device, dtype)
        for _ in range(args.repeats):
            for name in names:
                if not isolate:
                    result = measure(name, models[name], batch, device, args.steps, isolated=False)
                    results[shape][name].append(result)
                    continue
                cmd = [sys.executable, __file__, "--worker", name, "--shape", shape, "--device", args.device]
                cmd += ["--dtype", args.dtype, "--steps", str(args.steps), "--threads", str(args.threads)]
                cmd += ["--dims", args.dims]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode:
                    raise RuntimeError(f"{name} failed on shape {shape}:\n{done.stderr[-3000:]}")
                results[shape][name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    return results


def summarise(args, raw: dict) -> dict:
    """Spreads over the rounds, MFU and round-by-round ratios to each baseline."""
    import torch

    cfg = build_config(args.dims)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    peak_tflops = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device_name), None)
    summary = {}
    for shape, per_model in raw.items():
        batch_size, n = SHAPES[shape]
        models = {}
        for name, rounds in per_model.items():
            step = [r["step_s"] for r in rounds]
            flops = model_flops_per_step(name, cfg, batch_size, n)
            peaks = [r["peak_bytes"] for r in rounds if r["peak_bytes"] is not None]
            models[name] = {
                "step_s": Spread(step).as_dict(),
                "tokens_per_s": Spread([batch_size * n / s for s in step]).as_dict(),
                "peak_bytes": statistics.median(peaks) if peaks else None,
                "saved_bytes": rounds[0]["saved_bytes"],
                "flops_per_step": flops,
                "mfu": Spread([flops / s / (peak_tflops * 1e12) for s in step]).as_dict()
                if peak_tflops and args.dtype == "bf16"
                else None,
            }
        versus = {}
        if "ours" in per_model:
            ours = per_model["ours"]
            for base in ("naive", "llama"):
                if base not in per_model:
                    continue
                other = per_model[base]
                peak = None
                if models["ours"]["peak_bytes"] is not None and models[base]["peak_bytes"]:
                    peak = models["ours"]["peak_bytes"] / models[base]["peak_bytes"]
                versus[base] = {
                    "step_time": ratios([r["step_s"] for r in ours], [r["step_s"] for r in other]).as_dict(),
                    "peak_memory": peak,
                    "saved": models["ours"]["saved_bytes"] / max(models[base]["saved_bytes"], 1),
                }
        summary[shape] = {"batch": batch_size, "n": n, "models": models, "ours_vs": versus}
    return summary


def print_summary(summary: dict, args) -> None:
    for shape, s in summary.items():
        rounds = f"{args.repeats} rounds x {args.steps} steps"
        print(f"\nshape ({shape}): batch {s['batch']}, N {s['n']}; {rounds}")
        header = f"{'step s median [range]':>26}{'tokens/s':>10}{'peak MiB':>10}{'saved MiB':>11}{'MFU':>7}"
        print(f"{'model':<7}{header}")
        for name, r in s["models"].items():
            step = Spread(r["step_s"]["values"])
            peak = f"{r['peak_bytes'] / 2**20:.0f}" if r["peak_bytes"] is not None else "n/a"
            mfu = f"{r['mfu']['median']:.1%}" if r["mfu"] else "n/a"
            print(
                f"{name:<7}{step.format():>26}{r['tokens_per_s']['median']:>10.0f}{peak:>10}"
                f"{r['saved_bytes'] / 2**20:>11.0f}{mfu:>7}"
            )
        for base, v in s["ours_vs"].items():
            peak = f"x{v['peak_memory']:.2f}" if v["peak_memory"] is not None else "n/a"
            print(
                f"ours vs {base}: step time x{Spread(v['step_time']['values']).format(2)}, "
                f"peak memory {peak}, saved activations x{v['saved']:.2f}"
            )


def parse_step_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The options every training-step script shares (this one, perf/lora.py), then parse."""
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], help="default: fp32 on cpu, bf16 on cuda")
    parser.add_argument("--dims", choices=sorted(DIMS), help="default: small on cpu, 7b-4layers on cuda")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; figures are median [range] over them")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per round after one warm-up")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument(
        "--isolate",
        choices=["auto", "yes", "no"],
        default="auto",
        help="a subprocess per measurement (auto: on the CPU, where it keeps peak memory clean)",
    )
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.dtype = args.dtype or ("fp32" if args.device == "cpu" else "bf16")
    args.dims = args.dims or ("small" if args.device == "cpu" else "7b-4layers")
    return args


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", default="ab", help="which of the shapes a, b to run")
    parser.add_argument("--models", default="ours,naive,llama")
    args = parse_step_args(parser)
    if args.worker:
        print(json.dumps(worker(args)))
        return

    cfg = build_config(args.dims)
    dims = {
        k: getattr(cfg, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size")
    }
    print(f"device {args.device}, dtype {args.dtype}, threads {args.threads}, {dims}")
    same_loss = check_same_loss(args) if "naive" in args.models else None
    if same_loss is not None:
        print(f"loss |ours - naive| on a 650-token batch: {same_loss:.2e}")
    summary = summarise(args, run_rounds(args, args.models.split(",")))
    print_summary(summary, args)
    if args.json:
        record = {"device": args.device, "dtype": args.dtype, "threads": args.threads, "dims": dims}
        record.update(repeats=args.repeats, steps=args.steps, loss_vs_naive=same_loss, shapes=summary)
        Path(args.json).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
