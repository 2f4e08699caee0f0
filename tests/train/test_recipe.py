"""The recipe end to end on a tiny config: exact resume, export round trip, stage 1 -> stage 2."""

import json
import shutil

import pytest
import torch
from conftest import tiny_train_config
from safetensors.torch import load_file
from toolkit.wandb_files import offline_runs

from libra.model import LibraForCausalLM
from libra.tokenizer.processor import LibraProcessor
from libra.tracking import read_metrics
from libra.train import recipe
from libra.train.checkpoint import latest_checkpoint, list_checkpoints
from libra.train.recipe import train

pytestmark = pytest.mark.slow


def losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "train/loss" in r}


def test_resume_after_a_checkpoint_matches_the_uninterrupted_run(tmp_path, tiny_cache):
    full = tmp_path / "full"
    train(tiny_train_config(full, tiny_cache, max_steps=6, checkpoint_every=3, keep_last=5))
    assert [p.name for p in list_checkpoints(full)] == ["step_000003", "step_000006"]
    # "Stop" right after the step-3 checkpoint: a run dir holding only that checkpoint, resumed.
    resumed = tmp_path / "resumed"
    shutil.copytree(full / "checkpoints" / "step_000003", resumed / "checkpoints" / "step_000003")
    cfg = tiny_train_config(resumed, tiny_cache, max_steps=6, checkpoint_every=3, keep_last=5)
    cfg.resume = "auto"
    train(cfg)
    expected, got = losses(full), losses(resumed)
    assert sorted(got) == [4, 5, 6]  # nothing before the checkpoint was redone
    for step in (4, 5, 6):
        assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), step
    # the data position, not just the weights, was restored: the losses differ from step to step
    assert len({round(v, 6) for v in got.values()}) == 3


def test_keep_last_atomic_names_and_export_on_demand(tmp_path, tiny_cache):
    run = tmp_path / "run"
    run.mkdir()
    (run / "EXPORT_NOW").touch()  # asked for an export before the first step ends
    train(tiny_train_config(run, tiny_cache, max_steps=4, checkpoint_every=1, keep_last=2))
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["step_000003", "step_000004"]  # no .tmp leftovers, older ones pruned
    assert not (run / "EXPORT_NOW").exists()
    assert LibraForCausalLM.from_pretrained(run / "export_step_000001").config.vocab_size > 0
    assert latest_checkpoint(run).name == "step_000004"
    ds = json.loads((run / "deepspeed_config.json").read_text())
    assert ds["gradient_clipping"] == 1.0 and ds["gradient_accumulation_steps"] == 2


def test_export_round_trip_and_stage1_feeds_stage2(tmp_path, tiny_cache):
    """Stage 1 (language frozen) exports a folder that from_pretrained loads and stage 2 starts from."""
    stage1 = tmp_path / "stage1"
    cfg = tiny_train_config(stage1, tiny_cache, max_steps=2, freeze_language=True)
    train(cfg)
    export = stage1 / "export"
    model = LibraForCausalLM.from_pretrained(export)
    processor = LibraProcessor.from_pretrained(export)
    # the export holds exactly the trained weights (the last checkpoint's module state)
    trained = torch.load(latest_checkpoint(stage1) / "mp_rank_00_model_states.pt", weights_only=False)[
        "module"
    ]
    exported = load_file(export / "model.safetensors")
    assert set(exported) <= set(trained)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, trained[name], rtol=0, atol=0, msg=name)
    # stage 1 left the language half untouched and moved the visual expert
    initial = _initial(cfg)
    lang = "model.layers.0.mlp.gate_proj.weight"
    vision = "model.layers.0.mlp.vision_gate_proj.weight_A"
    assert processor.vocab.text_vocab_size == model.config.vocab_size
    assert not torch.equal(trained[vision], initial[vision])
    torch.testing.assert_close(trained[lang], initial[lang], rtol=0, atol=0)

    # stage 2 straight from the stage-1 run dir: model and tokenizer from its export
    stage2 = tmp_path / "stage2"
    cfg2 = tiny_train_config(stage2, tiny_cache, max_steps=1)
    cfg2.model = {
        "_target_": "libra.train.models.libra_from_pretrained",
        "_partial_": True,
        "init_from": str(stage1),
    }
    cfg2.tokenizer = {"_target_": "libra.train.models.processor_from_pretrained", "init_from": str(stage1)}
    train(cfg2)
    first = losses(stage2)[1]
    assert first < losses(stage1)[1]  # it continued from the trained weights, not from scratch


def _initial(cfg) -> dict[str, torch.Tensor]:
    """The recipe's initial weights: same seed, same factories."""
    from hydra.utils import instantiate

    from libra.train.state import seed_everything

    processor = instantiate(cfg.tokenizer)
    seed_everything(cfg.seed)
    return instantiate(cfg.model)(processor).state_dict()


def test_benchmark_during_and_after_training_with_baselines(tmp_path, tiny_cache):
    from conftest import CONF
    from omegaconf import OmegaConf

    run = tmp_path / "run"
    cfg = tiny_train_config(run, tiny_cache, max_steps=2, benchmark_every=1, benchmark_items=3)
    cfg.trainer.benchmark_at_end = True
    cfg.benchmark = OmegaConf.merge(
        OmegaConf.load(CONF / "benchmark" / "synthetic_vqa.yaml"),
        OmegaConf.load(CONF / "benchmark" / "synthetic_caption.yaml"),
    )
    for task in cfg.benchmark.values():
        task.max_items, task.batch_size = 4, 4
        task.metrics = ["CIDEr"] if "metrics" in task else None
        if task.metrics is None:
            del task["metrics"]
    train(cfg)
    during = [r for r in read_metrics(run / "metrics.jsonl") if "benchmark/synthetic_vqa/accuracy" in r]
    assert [r["step"] for r in during][:1] == [1]  # the small benchmark ran on the live model
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {
        "benchmark/synthetic_vqa/accuracy",
        "baseline/synthetic_vqa/accuracy",
        "benchmark/synthetic_caption/CIDEr",
        "baseline/synthetic_caption/CIDEr",
    }
    assert 0.0 <= metrics["baseline/synthetic_vqa/accuracy"] <= 100.0
    assert metrics["baseline/synthetic_caption/CIDEr"] >= 0.0
    # the VQA baseline's constant is the commonest training answer, scored on the same 4 questions
    from collections import Counter

    from libra.data.synthetic import synthetic_dataset
    from libra.train.baselines import majority_prediction, most_frequent

    layout = synthetic_dataset(tiny_cache, **cfg.synthetic)
    train_answers = json.loads(layout.vqa_annotations_file("train").read_text())["annotations"]
    counts = Counter(most_frequent(a["answer"] for a in ann["answers"]) for ann in train_answers)
    top = max(counts.values())
    assert majority_prediction(cfg.benchmark.synthetic_vqa) == min(a for a, c in counts.items() if c == top)
    test_answers = json.loads(layout.vqa_annotations_file("test").read_text())["annotations"][:4]
    constant = majority_prediction(cfg.benchmark.synthetic_vqa)
    expected = (
        100
        * sum(min(1.0, [a["answer"] for a in ann["answers"]].count(constant) / 3) for ann in test_answers)
        / 4
    )
    assert metrics["baseline/synthetic_vqa/accuracy"] == pytest.approx(expected, abs=10.0)
    assert (run / "benchmark" / "synthetic_vqa" / "predictions.json").is_file()


def test_a_crash_in_the_loop_finishes_the_wandb_run_it_opened(tmp_path, tiny_cache, monkeypatch):
    """The run owns its logger: whatever raises after set-up closes the W&B run, marked failed."""
    cfg = tiny_train_config(tmp_path, tiny_cache)
    cfg.logger = {"backend": {"_target_": "libra.tracking.WandbLogger", "project": "t", "mode": "offline"}}

    def crashing_loop(run):
        run.logger.log({"train/loss": 4.0}, step=1)
        raise RuntimeError("crashed at step 2")

    monkeypatch.setattr(recipe, "fit", crashing_loop)
    with pytest.raises(RuntimeError, match="crashed at step 2"):
        train(cfg)
    (run,) = offline_runs(tmp_path / "wandb")
    assert run.exit_code == 1 and [r["train/loss"] for r in run.history if "train/loss" in r] == [4.0]
