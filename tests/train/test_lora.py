"""finetune=lora (libra/train/lora.py): adapters only train, the merge is exact, and a stage-2 LoRA run
through `python run.py` trains, resumes, exports and benchmarks."""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from toolkit.conftest import compose_config, run_py
from toolkit.test_paper_runs import (
    NO_BENCHMARK,
    SMALL_RUN,
    SMALL_SYNTHETIC,
    SYNTHETIC,
    TINY_MODEL,
    train_losses,
)

from libra import tracking
from libra.model import LibraForCausalLM
from libra.train.lora import LoraFinetune, count_parameters
from libra.train.optim import build_adamw
from libra.validation import BRIDGES, LANGUAGE_LINEARS, VISION_EXPERT

EVERY_TARGET = list(LANGUAGE_LINEARS + VISION_EXPERT + BRIDGES)


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def reference(data_dir):
    """The golden tiny Libra (bridges on) and its first batch: text and image tokens, with labels."""
    folder = data_dir / "libra_reference_tiny"
    inputs = load_file(folder / "inputs.safetensors")
    batch = {k.split(".", 1)[1]: v for k, v in inputs.items() if k.startswith("batch0.")}
    return LibraForCausalLM.from_pretrained(folder), batch


def lora(**settings) -> LoraFinetune:
    values = {"rank": 4, "alpha": 8, "dropout": 0.0, "target_modules": EVERY_TARGET}
    return LoraFinetune(**{**values, **settings})


def test_only_adapter_parameters_change_after_training_steps(reference):
    model, batch = reference
    lora(dropout=0.1).prepare(model)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    # both factors of every visual-expert projection and bridge carry adapters
    for layer in ("self_attn.vision_q_proj", "self_attn.vision_k_bridge_on_language", "mlp.vision_down_proj"):
        for factor in ("factor_A", "factor_B"):
            assert f"model.layers.1.{layer}.{factor}.lora_B.default.weight" in trainable
    optimizer = build_adamw(model, lr=1e-2, weight_decay=0.1)  # decay would move frozen weights if in groups
    for _ in range(3):
        model(**batch, return_logits=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = model.state_dict()
    for name, value in after.items():
        if name in trainable:
            continue
        assert torch.equal(value, before[name]), f"{name} is frozen but changed"
    # lora_B starts at zero and no decay moves a zero: each one changed because gradients reached it,
    # the visual expert's included (their layers run their own forward, not the stacked-factor GEMM)
    for name in trainable:
        if ".lora_B." in name:
            assert not torch.equal(after[name], before[name]), f"{name} got no gradient"


def test_merged_export_gives_the_unmerged_logits(reference, tmp_path, data_dir):
    model, batch = reference
    finetune = lora()
    finetune.prepare(model)
    with torch.no_grad():  # trained-looking adapters (lora_B starts at zero: the merge would be trivial)
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.normal_(0.0, 0.2, generator=torch.Generator().manual_seed(len(name)))
    model.eval()
    with torch.no_grad():
        unmerged = model(**batch).logits
    plain, state = finetune.export_state(model, model.state_dict())
    plain.save_pretrained(tmp_path, state_dict=state, safe_serialization=True)
    exported = LibraForCausalLM.from_pretrained(tmp_path).eval()  # the official names, loaded strictly
    assert set(exported.state_dict()) == set(LibraForCausalLM(model.config).state_dict())
    with torch.no_grad():
        merged = exported(**batch).logits
    finite = torch.isfinite(unmerged)  # the other modality's columns are -inf in both
    assert torch.equal(finite, torch.isfinite(merged))
    assert (merged[finite] - unmerged[finite]).abs().max().item() <= 1e-5
    base = LibraForCausalLM.from_pretrained(data_dir / "libra_reference_tiny").eval()
    with torch.no_grad():
        assert (base(**batch).logits[finite] - unmerged[finite]).abs().max().item() > 1e-2  # adapters count


def test_a_bf16_base_trains_fp32_adapters(reference):
    model, batch = reference
    lora(base_dtype="bfloat16").prepare(model)
    dtypes = {p.dtype for p in model.parameters() if p.requires_grad}
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert dtypes == {torch.float32} and frozen == {torch.bfloat16}
    loss = model.train()(**batch, return_logits=False).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    trainable, total = count_parameters(model)
    assert 0 < trainable < total / 2


def test_gradient_checkpointing_gives_the_same_adapter_gradients(data_dir, reference):
    """experiment=instruct checkpoints activations: the frozen base must still pass gradients on."""
    _, batch = reference

    def adapter_grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        model = LibraForCausalLM.from_pretrained(data_dir / "libra_reference_tiny")
        lora().prepare(model)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if param.requires_grad:
                    param.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(len(name)))
        if checkpointing:
            with warnings.catch_warnings():  # transformers 5 renamed it activation_checkpointing_enable
                warnings.simplefilter("ignore", FutureWarning)
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()(**batch, return_logits=False).loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    plain, checkpointed = adapter_grads(False), adapter_grads(True)
    assert plain.keys() == checkpointed.keys()
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=0, atol=1e-6, msg=name)


def test_resume_compares_the_settings_and_the_base():
    from libra.train.lora import FULL, resume_problems

    saved = {**lora().record(), "base_checksum": 1234.5}
    assert resume_problems(saved, dict(saved)) == []
    assert resume_problems(saved, {**saved, "base_checksum": 1234.5 * (1 + 1e-12)}) == []  # rounding only
    (base,) = resume_problems(saved, {**saved, "base_checksum": 1234.6})
    assert "frozen base differs" in base and "model.init_from" in base
    (rank,) = resume_problems(saved, {**saved, "rank": 8})
    assert "finetune.rank is 8" in rank and "finetune.rank=4" in rank
    # a checkpoint of a full finetune (older manifests say nothing: full) cannot continue as LoRA
    (mode,) = resume_problems(FULL.record(), saved)
    assert "finetune=full" in mode and "finetune=lora" in mode


def test_validation_refuses_lora_on_top_of_stage1_freezing():
    from hydra.core.hydra_config import HydraConfig

    from libra.validation import ConfigError, validate

    try:
        validate(compose_config(["finetune=lora"]))
        with pytest.raises(ConfigError, match="trainer.freeze_language: is true with finetune=lora"):
            validate(compose_config(["finetune=lora", "trainer.freeze_language=true"]))
    finally:
        HydraConfig.instance().cfg = None  # compose_config set it for ${hydra:...}


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"target_modules": ["q_proj", "vision_qproj"]}, "finetune.target_modules"),
        ({"rank": 0}, "finetune.rank"),
        ({"dropout": 1.0}, "finetune.dropout"),
        ({"base_dtype": "float16"}, "finetune.base_dtype"),
    ],
)
def test_bad_settings_name_the_key(settings, key):
    with pytest.raises(ValueError, match=key):
        lora(**settings)


# ----------------------------------------------------------------- stage 1 -> LoRA stage 2 via run.py

# the README command's dtypes: a bf16 base, fp32 adapters
LORA = ["finetune=lora", "finetune.rank=2", "finetune.alpha=4", "finetune.dropout=0.0"]
LORA += ["finetune.base_dtype=bfloat16", "trainer.precision=fp32"]


@pytest.fixture(scope="module")
def user(tmp_path_factory) -> dict:
    from libra.data.synthetic import synthetic_dataset

    cache = tmp_path_factory.mktemp("cache")
    return {
        "env": {"LIBRA_CACHE_DIR": str(cache)},
        "layout": synthetic_dataset(cache, **SYNTHETIC),
        "cwd": tmp_path_factory.mktemp("work"),
    }


def run(user: dict, args: list[str], run_dir: Path, ok: bool = True):
    result = run_py([*args, "logger=none", f"hydra.run.dir={run_dir}"], cwd=user["cwd"], env=user["env"])
    if ok:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


@pytest.fixture(scope="module")
def stage1(user) -> Path:
    """The default experiment at tiny size for one step: a full checkpoint and an export to start from."""
    folder = user["cwd"] / "stage1"
    run(user, [*TINY_MODEL, *SMALL_RUN, NO_BENCHMARK, "trainer.max_steps=1", "trainer.eval_every=0"], folder)
    return folder


def stage2(user: dict, stage1: Path) -> list[str]:
    """experiment=instruct (ZeRO-3) with LoRA on the LLaVA-layout synthetic file, 3 steps, no benchmark."""
    layout = user["layout"]
    args = ["experiment=instruct", *LORA, *SMALL_RUN, NO_BENCHMARK, f"model.init_from={stage1}"]
    args += [f"data.annotation_file={layout.llava_file('train')}", f"data.image_roots=[{layout.image_root}]"]
    args += ["data.train.image_token_count=18", "trainer.max_steps=3", "trainer.checkpoint_every=2"]
    return [*args, "optimizer.lr=1e-2"]  # adapters that move visibly in 3 steps: a lost one would show


@pytest.fixture(scope="module")
def lora_run(user, stage1) -> Path:
    folder = user["cwd"] / "lora"
    run(user, [*stage2(user, stage1), "trainer.keep_last=5"], folder)
    return folder


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def merged_export(stage1: Path, step: Path) -> dict[str, torch.Tensor]:
    """What the export of a LoRA run whose final state is `step` must hold: stage 1's weights (the base,
    held in bf16) with that step's adapters merged in, under the official names."""
    from libra.pretrained import deepspeed_module_state
    from libra.train.lora import merged_state_dict

    base = {k: v.bfloat16() for k, v in load_file(stage1 / "export" / "model.safetensors").items()}
    adapters = deepspeed_module_state(step)  # the ZeRO-3 shards, gathered
    peft_named = {}
    for key, value in base.items():
        layer, _, leaf = key.rpartition(".")
        factor = {"weight_A": "factor_A", "weight_B": "factor_B"}.get(leaf)
        if factor and f"{layer}.{factor}.lora_A.default.weight" in adapters:
            peft_named[f"{layer}.{factor}.base_layer.weight"] = value
        elif f"{layer}.lora_A.default.weight" in adapters:
            peft_named[f"{layer}.base_layer.weight"] = value
        else:
            peft_named[key] = value
    return merged_state_dict({**peft_named, **adapters}, scaling=4 / 2)


def assert_same_weights(ours: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> None:
    assert ours.keys() == expected.keys(), what
    differ = {k: (ours[k].float() - v.float()).abs().max().item() for k, v in expected.items()}
    differ = {k: v for k, v in differ.items() if v > 1e-6}
    largest = sorted(differ.items(), key=lambda kv: -kv[1])[:5]
    assert not differ, f"{what}: {len(differ)} tensors differ by more than 1e-6, the largest {largest}"


@pytest.mark.slow
def test_lora_stage2_checkpoints_hold_only_adapters_and_its_export_is_base_plus_adapters(stage1, lora_run):
    from libra.pretrained import deepspeed_module_state

    losses = train_losses(lora_run)
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    step = lora_run / "checkpoints" / "step_000002"
    manifest = json.loads((step / "manifest.json").read_text())
    assert manifest["adapters_only"] and manifest["finetune"]["mode"] == "lora"
    adapters = deepspeed_module_state(step)  # the ZeRO-3 shards, gathered
    assert adapters and all(".lora_A." in k or ".lora_B." in k for k in adapters)
    # much smaller than the full checkpoint of the same model (stage 1: weights + AdamW for all of them)
    full = folder_bytes(stage1 / "checkpoints" / "step_000001")
    assert folder_bytes(step) < 0.25 * full, (folder_bytes(step), full)

    # the export = stage 1's weights (held in bf16) + the final adapters, merged: nothing else moved
    base = {k: v.bfloat16() for k, v in load_file(stage1 / "export" / "model.safetensors").items()}
    expected = merged_export(stage1, lora_run / "checkpoints" / "step_000003")
    exported = load_file(lora_run / "export" / "model.safetensors")
    assert exported.keys() == base.keys() == expected.keys()
    for key, value in exported.items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=1e-6, msg=key)
    changed = {k: (exported[k] - base[k].float()).abs().max().item() for k in base}
    changed = {k: v for k, v in changed.items() if v > 0}
    assert all(k.endswith(("_proj.weight", "_proj.weight_A", "_proj.weight_B")) for k in changed)
    assert min(changed.values()) > 1e-3
    # every target of the first layer moved; in the last layer the image rows' own path (vision q, o and
    # MLP) feeds only the image loss, which stage 2 does not have, so its adapters got no gradient
    first = [f"{part}.weight" for part in LANGUAGE_LINEARS]
    first += [f"{part}.weight_{factor}" for part in VISION_EXPERT for factor in "AB"]
    targets = {k for k in base if ".layers.0." in k and k.endswith(tuple(first))}
    assert {k for k in changed if ".layers.0." in k} == targets
    assert {k for k in changed if ".layers.1." in k and "vision" in k} == {
        f"model.layers.1.self_attn.vision_{kv}_proj.weight_{factor}" for kv in "kv" for factor in "AB"
    }


def train_state_counts(step: Path) -> dict:
    from libra.safe_load import safe_torch_load

    state = safe_torch_load(step / "train_state_rank0.pt")
    return {key: state[key] for key in ("step", "samples_seen", "tokens_seen", "data")}


def step_record(run_dir: Path, step: int) -> dict:
    rows = tracking.read_metrics(run_dir / "metrics.jsonl")
    (record,) = [r for r in rows if r.get("step") == step and "train/loss" in r]
    return record


@pytest.mark.slow
def test_a_resumed_lora_run_matches_the_uninterrupted_one(user, stage1, lora_run):
    """Only the step-2 checkpoint in a fresh run dir, `resume=auto`: the base is re-read from
    model.init_from, the adapters and optimizer from the checkpoint. First the restore alone (a run
    resumed at its last step exports what it loaded), then the continuation: step 3 and the export agree."""
    step2 = lora_run / "checkpoints" / "step_000002"
    restored = user["cwd"] / "lora_restored"
    shutil.copytree(step2, restored / "checkpoints" / "step_000002")
    result = run(user, [*stage2(user, stage1), "resume=auto", "trainer.max_steps=2"], restored)
    assert "resumed from" in result.stdout and "at step 2" in result.stdout
    loaded = load_file(restored / "export" / "model.safetensors")
    assert_same_weights(loaded, merged_export(stage1, step2), "export of the restored step-2 state")

    resumed = user["cwd"] / "lora_resumed"
    shutil.copytree(step2, resumed / "checkpoints" / "step_000002")
    result = run(user, [*stage2(user, stage1), "resume=auto"], resumed)
    assert "resumed from" in result.stdout and "at step 2" in result.stdout
    ours, theirs = step_record(resumed, 3), step_record(lora_run, 3)
    # the same data position and count of non-padding tokens (so the same batch) before the same loss
    counts = [train_state_counts(folder / "checkpoints" / "step_000003") for folder in (resumed, lora_run)]
    assert counts[0] == counts[1]
    steps = [line for line in result.stdout.splitlines() if line.startswith("[libra]")]
    assert ours["train/loss"] == pytest.approx(theirs["train/loss"], rel=1e-5), (ours, theirs, steps)
    assert_same_weights(
        load_file(resumed / "export" / "model.safetensors"),
        load_file(lora_run / "export" / "model.safetensors"),
        "export of the resumed run against the uninterrupted one",
    )


@pytest.mark.slow
def test_resume_refuses_adapters_of_another_base_or_other_settings(user, stage1, lora_run, tmp_path):
    """Adapters only make sense on their base: a different `model.init_from` or rank is refused before
    a step is taken, with what differs."""
    other_base = tmp_path / "other_base"
    shutil.copytree(stage1 / "export", other_base)
    weights = load_file(other_base / "model.safetensors")
    weights["lm_head.weight"] = weights["lm_head.weight"] * 1.01
    save_file(weights, other_base / "model.safetensors", metadata={"format": "pt"})
    for case, extra in {"base": [f"model.init_from={other_base}"], "rank": ["finetune.rank=3"]}.items():
        folder = tmp_path / case
        shutil.copytree(lora_run / "checkpoints" / "step_000002", folder / "checkpoints" / "step_000002")
        result = run(user, [*stage2(user, stage1), "resume=auto", *extra], folder, ok=False)
        assert result.returncode != 0, case
        assert "cannot resume" in result.stderr and case in result.stderr, result.stderr[-2000:]
        assert not (folder / "export").exists()


@pytest.mark.slow
def test_task_benchmark_scores_the_lora_run(user, lora_run, tmp_path):
    """`checkpoint=<run dir>` picks the merged export; a LoRA step folder alone is refused with the fix."""
    args = ["task=benchmark", f"checkpoint={lora_run}", "benchmark=synthetic", *SMALL_SYNTHETIC]
    args += ["benchmark.synthetic_vqa.max_items=4", "benchmark.synthetic_caption.max_items=2"]
    result = run(user, [*args, "trainer.precision=fp32"], tmp_path / "bench")
    assert f"using its final export {lora_run / 'export'}" in result.stdout
    metrics = json.loads((tmp_path / "bench" / "metrics.json").read_text())
    assert 0 <= metrics["benchmark/synthetic_vqa/accuracy"] <= 100
    step = lora_run / "checkpoints" / "step_000002"
    args = ["task=benchmark", f"checkpoint={step}", "benchmark=synthetic"]
    refused = run(user, args, tmp_path / "refused", ok=False)
    assert refused.returncode != 0 and "holds LoRA adapters only" in refused.stderr
    unfinished = tmp_path / "unfinished"  # a run dir before its export: checkpoints only
    for part in ("checkpoints", "model_files"):
        shutil.copytree(lora_run / part, unfinished / part)
    args = ["task=benchmark", f"checkpoint={unfinished}", "benchmark=synthetic"]
    refused = run(user, args, tmp_path / "refused_run_dir", ok=False)
    assert refused.returncode != 0 and "a finetune=lora run dir without an export" in refused.stderr
    assert "EXPORT_NOW" in refused.stderr
