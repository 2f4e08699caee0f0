"""Training step of LoRA finetuning (finetune=lora) against full finetuning, same shapes, one run.

    python perf/lora.py                          # CPU: small config (hidden 512, 8 layers), fp32
    python perf/lora.py --device cuda            # GPU: LLaMA-2-7B dimensions with 4 layers, bf16
    python perf/lora.py --dims tiny --shapes a --repeats 2 --steps 1   # seconds: does it run
    python perf/lora.py --shapes c --repeats 2 --steps 1               # CPU, a minute or two

Modes, timed on the same batches (shapes a, b of perf/train_step.py and c, one 650-token sample):
  full       every parameter trainable (today's stage 2), AdamW over all of them
  lora       conf/finetune/lora.yaml's adapters (rank 16 on the language linears and on both factors
             of every visual-expert projection), base frozen in the run's dtype
  lora_bf16  the same with the frozen base held in bf16 (finetune.base_dtype=bfloat16); on a CPU run in
             fp32 the activations then flow in bf16 too, which CPUs compute slowly
A step is forward + backward + AdamW step (libra/train/optim.py's groups, weight decay on), the same
work as the recipe's step without DeepSpeed. What is measured:
  trainable  parameters the optimizer updates (exact, no timing involved)
  state MiB  bytes the step keeps besides the model: gradients + AdamW moments (exact, counted)
  peak MiB   growth of memory over the built model during a warm-up step and the timed steps. CPU: the
             peak resident set (ru_maxrss) minus the resident set before the first step, each
             (mode, shape, round) in a process of its own; it includes activations, gradients,
             optimizer state and the allocator's slack. GPU: max_memory_allocated minus the memory
             allocated before the first step.
  saved MiB  tensors autograd keeps for the backward pass (parameters excluded)
Rounds as in perf/train_step.py: each figure is median [min - max] over `--repeats` rounds, ratios formed
round by round (perf/timing.py). Times on a shared machine are rough; parameter and memory figures are
what this script is for.
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perf.timing import Spread, ratios, time_calls  # noqa: E402
from perf.train_step import SHAPES as TRAIN_STEP_SHAPES  # noqa: E402
from perf.train_step import MemoryProbe, build_config, make_batch, parse_step_args  # noqa: E402

# perf/train_step.py's two shapes, and (c) one sample of one image + 71 text tokens: the micro-batch of
# large-model LoRA finetuning, where activations are small next to the optimizer state
SHAPES = {**TRAIN_STEP_SHAPES, "c": (1, 650)}

MODES = ("full", "lora", "lora_bf16")
LORA_CONFIG = Path(__file__).resolve().parents[1] / "conf" / "finetune" / "lora.yaml"


def build(mode: str, cfg, device, dtype):
    """(model, optimizer) of one mode; the same seeded weights in every mode."""
    import torch
    from hydra.utils import instantiate

    from libra.config_schema import load_option
    from libra.model import LibraForCausalLM
    from libra.train.optim import build_adamw

    torch.manual_seed(0)
    model = LibraForCausalLM(cfg).to(dtype)
    if mode != "full":
        settings = load_option(LORA_CONFIG)
        settings.dropout = 0.0  # dropout masks would be extra saved tensors of lora only
        settings.base_dtype = "bfloat16" if mode == "lora_bf16" else str(dtype).removeprefix("torch.")
        instantiate(settings).prepare(model)
    model = model.to(device).train()
    return model, build_adamw(model, lr=1e-4, weight_decay=0.01)


def measure(mode: str, cfg, shape: str, device, dtype, steps: int, isolated: bool) -> dict:

    from libra.train.lora import count_parameters

    model, optimizer = build(mode, cfg, device, dtype)
    batch = make_batch(cfg, *SHAPES[shape], device, dtype)
    trainable, total = count_parameters(model)
    probe = MemoryProbe(model, device, isolated)

    def step():
        loss = model(**batch, use_cache=False, return_logits=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    probe.start()
    with probe.saved_tensors():
        loss = model(**batch, use_cache=False, return_logits=False).loss
    loss.backward()
    # gradients of the trainable parameters + AdamW's two moments, exactly (before zero_grad frees them)
    state = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    optimizer.step()
    state += sum(
        t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if t.dim() > 0
    )
    optimizer.zero_grad(set_to_none=True)
    del loss
    times = time_calls(step, steps, probe.sync).values
    peak = probe.peak()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return {
        "step_s": statistics.median(times),
        "trainable": trainable,
        "parameters": total,
        "weight_bytes": weights,
        "state_bytes": state,
        "peak_bytes": peak,
        "saved_bytes": probe.saved_bytes,
    }


def run_rounds(args) -> dict:
    """{shape: {mode: [one result per round]}}, modes interleaved within each round."""
    import torch

    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    isolate = args.isolate == "yes" or (args.isolate == "auto" and device.type == "cpu")
    if not isolate:
        torch.set_num_threads(args.threads)
    cfg = build_config(args.dims)
    results = {shape: {mode: [] for mode in args.modes} for shape in args.shapes}
    for shape in args.shapes:
        for _ in range(args.repeats):
            for mode in args.modes:
                if not isolate:
                    results[shape][mode].append(measure(mode, cfg, shape, device, dtype, args.steps, False))
                    continue
                cmd = [sys.executable, __file__, "--worker", mode, "--shape", shape, "--device", args.device]
                cmd += ["--dtype", args.dtype, "--steps", str(args.steps), "--threads", str(args.threads)]
                cmd += ["--dims", args.dims]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode:
                    raise RuntimeError(f"{mode} failed on shape {shape}:\n{done.stderr[-3000:]}")
                results[shape][mode].append(json.loads(done.stdout.strip().splitlines()[-1]))
    return results


def summarise(raw: dict) -> dict:
    summary = {}
    for shape, per_mode in raw.items():
        modes = {}
        for mode, rounds in per_mode.items():
            peaks = [r["peak_bytes"] for r in rounds if r["peak_bytes"] is not None]
            first = rounds[0]
            modes[mode] = {
                "step_s": Spread([r["step_s"] for r in rounds]).as_dict(),
                "peak_bytes": Spread(peaks).as_dict() if peaks else None,
                **{k: first[k] for k in ("trainable", "parameters", "weight_bytes", "state_bytes")},
                "saved_bytes": first["saved_bytes"],
            }
        versus = {}
        full = per_mode.get("full")
        for mode in per_mode:
            if mode == "full" or full is None:
                continue
            ours, base = modes[mode], modes["full"]
            peak = None
            if ours["peak_bytes"] and base["peak_bytes"]:
                peak = ratios(ours["peak_bytes"]["values"], base["peak_bytes"]["values"]).as_dict()
            versus[mode] = {
                "trainable": ours["trainable"] / base["trainable"],
                "state": ours["state_bytes"] / base["state_bytes"],
                "weights": ours["weight_bytes"] / base["weight_bytes"],
                "peak_memory": peak,
                "saved": ours["saved_bytes"] / max(base["saved_bytes"], 1),
                "step_time": ratios(
                    [r["step_s"] for r in per_mode[mode]], [r["step_s"] for r in full]
                ).as_dict(),
            }
        batch, n = SHAPES[shape]
        summary[shape] = {"batch": batch, "n": n, "modes": modes, "vs_full": versus}
    return summary


def print_summary(summary: dict, args) -> None:
    mib = 2**20
    for shape, s in summary.items():
        rounds = f"{args.repeats} rounds x {args.steps} steps"
        print(f"\nshape ({shape}): batch {s['batch']}, N {s['n']}; {rounds}")
        print(
            f"{'mode':<10}{'trainable':>11}{'of all':>8}{'weights MiB':>12}{'state MiB':>10}"
            f"{'peak MiB median [range]':>26}{'saved MiB':>10}{'step s median [range]':>24}"
        )
        for mode, r in s["modes"].items():
            peak = "n/a"
            if r["peak_bytes"]:
                peak = Spread([v / mib for v in r["peak_bytes"]["values"]]).format(0)
            print(
                f"{mode:<10}{r['trainable']:>11,}{r['trainable'] / r['parameters']:>8.2%}"
                f"{r['weight_bytes'] / mib:>12.1f}{r['state_bytes'] / mib:>10.1f}{peak:>26}"
                f"{r['saved_bytes'] / mib:>10.1f}{Spread(r['step_s']['values']).format():>24}"
            )
        for mode, v in s["vs_full"].items():
            peak = Spread(v["peak_memory"]["values"]).format(2) if v["peak_memory"] else "n/a"
            print(
                f"{mode} vs full: trainable x{v['trainable']:.4f}, gradient+optimizer state "
                f"x{v['state']:.4f}, weights x{v['weights']:.2f}, peak memory x{peak}, "
                f"saved activations x{v['saved']:.2f}, "
                f"step time x{Spread(v['step_time']['values']).format(2)}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", default="abc", help="which of the shapes a, b, c to run")
    parser.add_argument("--modes", default=",".join(MODES))
    args = parse_step_args(parser)
    args.modes = args.modes.split(",") if isinstance(args.modes, str) else args.modes
    unknown = sorted(set(args.modes) - set(MODES))
    if unknown:
        parser.error(f"--modes: unknown {unknown}; choose from {','.join(MODES)}")
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
        cfg = build_config(args.dims)
        device = torch.device(args.device)
        print(json.dumps(measure(args.worker, cfg, args.shape, device, dtype, args.steps, isolated=True)))
        return

    cfg = build_config(args.dims)
    dims = {
        k: getattr(cfg, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size")
    }
    print(f"device {args.device}, dtype {args.dtype}, threads {args.threads}, {dims}")
    summary = summarise(run_rounds(args))
    print_summary(summary, args)
    if args.json:
        record = {"device": args.device, "dtype": args.dtype, "threads": args.threads, "dims": dims}
        record.update(repeats=args.repeats, steps=args.steps, shapes=summary)
        Path(args.json).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
