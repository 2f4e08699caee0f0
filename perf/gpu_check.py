"""Every GPU figure of perf/ in one run, written as JSON and a markdown table (perf/gpu_check.sh runs it).

    python perf/gpu_check.py OUT_DIR          # GPU: 7B dims x 4 layers train step, 11B dims decode, bf16
    python perf/gpu_check.py --cpu OUT_DIR    # smoke run: tiny dimensions on the CPU, seconds

Figures (each from perf/train_step.py or perf/decode.py, run as a subprocess with its --json output):
  train step time and peak memory of Libra against a same-size LLaMA on shapes (a) 8 x 650 and
  (b) 2 x 2048, and Libra's MFU counted with the FLOPs of each token's path (libra/model/flops.py);
  decode tokens/s at batch 1 and 8 after a 610-token image prompt, for Libra's dynamic-cache decoding,
  its compiled static-cache decoding (CUDA graphs) and LLaMA, with the KV cache size against LLaMA's.
Targets are those of the performance issue; the table says which are met. A part that fails is
recorded with its error and the other parts still run.
"""

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

GPU = {
    "train": "--device cuda --dims 7b-4layers --models ours,llama --repeats 3 --steps 3",
    "decode": "--device cuda --dims 11b --variants ours,ours-compiled,llama --repeats 3",
    "timeout_s": {"train": 200, "decode": 330},
}
CPU = {
    "train": "--device cpu --dims tiny --models ours,llama --repeats 1 --steps 1 --isolate no --threads 1",
    "decode": "--device cpu --dims tiny --variants ours,ours-static,llama --repeats 1 --threads 1",
    "timeout_s": {"train": 300, "decode": 300},
}
TARGETS = {  # figure -> (comparison, value)
    "train_step_vs_llama_a": ("<=", 1.25),
    "train_step_vs_llama_b": ("<=", 1.25),
    "peak_memory_vs_llama_a": ("<=", 1.5),
    "peak_memory_vs_llama_b": ("<=", 1.5),
    "mfu_a": (">=", 0.40),
    "decode_tokens_per_s_batch1": (">=", 200.0),
    "decode_tokens_per_s_batch8": (">=", 1000.0),
}


def run_part(name: str, script: str, args: str, out: Path, timeout: int) -> dict:
    """Run one perf script with --json; its figures, or the error that stopped it."""
    path = out / f"{name}.json"
    cmd = [sys.executable, str(ROOT / "perf" / script), *args.split(), "--json", str(path)]
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired as e:
        output = e.stdout or ""
        output = output.decode(errors="replace") if isinstance(output, bytes) else output
        return {"error": f"timed out after {timeout} s", "output": output[-3000:]}
    (out / f"{name}.log").write_text(done.stdout + done.stderr)
    seconds = time.perf_counter() - start
    print(done.stdout, flush=True)
    if done.returncode or not path.exists():
        return {"error": f"exit code {done.returncode}", "output": done.stderr[-3000:], "seconds": seconds}
    return {**json.loads(path.read_text()), "seconds": seconds}


def figures(train: dict, decode: dict) -> dict:
    """The issue's figures from the two parts' JSON (a missing part gives no figures)."""
    found = {}
    for shape, s in train.get("shapes", {}).items():
        llama = s["ours_vs"].get("llama", {})
        if "step_time" in llama:
            found[f"train_step_vs_llama_{shape}"] = llama["step_time"]["median"]
            found[f"train_step_vs_llama_{shape}_range"] = [
                llama["step_time"]["min"],
                llama["step_time"]["max"],
            ]
        if llama.get("peak_memory") is not None:
            found[f"peak_memory_vs_llama_{shape}"] = llama["peak_memory"]
        mfu = s["models"].get("ours", {}).get("mfu")
        if mfu:
            found[f"mfu_{shape}"] = mfu["median"]
        if "ours" in s["models"]:
            found[f"train_tokens_per_s_{shape}"] = s["models"]["ours"]["tokens_per_s"]["median"]
    for r in decode.get("results", {}).values():
        name, batch = r["variant"], r["batch"]
        found[f"decode/{name}/batch{batch}"] = r["decode_tokens_per_s"]["median"]
        if "vs_llama" in r:
            found[f"decode/{name}/batch{batch}_vs_llama"] = r["vs_llama"]["decode_tokens_per_s"]["median"]
        if r.get("kv_cache"):
            found[f"kv_cache_vs_llama/{name}/batch{batch}"] = r["kv_cache"]["ratio"]
    for batch in (1, 8):
        libra = {
            k.split("/")[1]: v
            for k, v in found.items()
            if k.startswith("decode/ours") and k.endswith(f"batch{batch}")
        }
        if libra:
            best = max(libra, key=libra.get)
            found[f"decode_tokens_per_s_batch{batch}"] = libra[best]
            found[f"decode_best_variant_batch{batch}"] = best
    return found


def verdicts(found: dict) -> dict:
    out = {}
    for key, (op, value) in TARGETS.items():
        if key in found:
            out[key] = found[key] <= value if op == "<=" else found[key] >= value
    return out


def markdown(record: dict) -> str:
    f, ok = record["figures"], record["meets_target"]
    lines = [
        f"# GPU check, {record['date']}",
        "",
        f"device: {record['device']}; torch {record['torch']}; mode: {record['mode']}",
        "",
        "| figure | measured | target | met |",
        "|---|---|---|---|",
    ]
    labels = {
        "train_step_vs_llama_a": "train step time vs LLaMA, shape (a) 8 x 650",
        "train_step_vs_llama_b": "train step time vs LLaMA, shape (b) 2 x 2048",
        "peak_memory_vs_llama_a": "train peak memory vs LLaMA, (a)",
        "peak_memory_vs_llama_b": "train peak memory vs LLaMA, (b)",
        "mfu_a": "MFU, shape (a) (FLOPs of each token's path)",
        "decode_tokens_per_s_batch1": "decode tokens/s, batch 1, 610-token image prompt",
        "decode_tokens_per_s_batch8": "decode tokens/s, batch 8",
    }
    for key, label in labels.items():
        op, value = TARGETS[key]
        shown = _show(key, f.get(key))
        if f"{key}_range" in f:
            lo, hi = f[f"{key}_range"]
            shown += f" [{lo:.2f}-{hi:.2f}]"
        if key.startswith("decode_tokens") and key in f:
            shown += f" ({f[key.replace('tokens_per_s', 'best_variant')]})"
        met = {True: "yes", False: "no"}.get(ok.get(key), "not measured")
        lines.append(f"| {label} | {shown} | {op} {_show(key, value)} | {met} |")
    lines += ["", "| other figure | measured |", "|---|---|"]
    for key, value in f.items():
        if key not in labels and not key.endswith("_range") and "best_variant" not in key:
            lines.append(f"| {key} | {_show(key, value)} |")
    for part in ("train", "decode"):
        if "error" in record["parts"][part]:
            lines += ["", f"{part} failed: {record['parts'][part]['error']}"]
    return "\n".join(lines) + "\n"


def _show(key: str, value) -> str:
    if value is None:
        return "n/a"
    if key.startswith("mfu"):
        return f"{value:.1%}"
    if "tokens_per_s" in key or key.startswith("decode/") and not key.endswith("vs_llama"):
        return f"{value:.1f}"
    return f"{value:.2f}x"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", help="folder for gpu_check.json, gpu_check.md and the parts' logs")
    parser.add_argument("--cpu", action="store_true", help="smoke run: tiny dimensions on the CPU")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plan = CPU if args.cpu else GPU
    import torch

    if not args.cpu and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible to torch; run with --cpu for the smoke run", file=sys.stderr)
        return 2
    start = time.perf_counter()
    parts = {
        "train": run_part("train_step", "train_step.py", plan["train"], out, plan["timeout_s"]["train"]),
        "decode": run_part("decode", "decode.py", plan["decode"], out, plan["timeout_s"]["decode"]),
    }
    found = figures(parts["train"], parts["decode"])
    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": "cpu smoke (tiny dimensions)" if args.cpu else "gpu",
        "device": torch.cuda.get_device_name() if not args.cpu else platform.processor() or "cpu",
        "torch": torch.__version__,
        "seconds": time.perf_counter() - start,
        "figures": found,
        "targets": {k: {"op": op, "value": v} for k, (op, v) in TARGETS.items()},
        "meets_target": verdicts(found),
        "parts": parts,
    }
    (out / "gpu_check.json").write_text(json.dumps(record, indent=1))
    (out / "gpu_check.md").write_text(markdown(record))
    print(markdown(record))
    return 1 if any("error" in p for p in parts.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
