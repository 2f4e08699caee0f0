"""The paper's runs through `python run.py`, as a user launches them, at tiny size (slow).

Stage 1 (`experiment=pretrain`) trains on LAION-layout webdataset shards, stage 2 (`experiment=instruct`)
starts from the stage-1 run dir and from its export and trains on a LLaVA-layout json, and
`experiment=benchmark_official` scores a run dir. Each experiment keeps its own data reader, DeepSpeed
stage, freezing and benchmark; only the model and tokenizer are tiny, and the data is the synthetic
set written in the real formats (its COCO Karpathy, VQAv2 and LLaVA files, laid out under
`$LIBRA_DATA_DIR` as the benchmark configs expect).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from libra import tracking
from libra.data.synthetic import synthetic_dataset
from libra.pretrained import read_training_record, trained_for_text_to_image

from .conftest import run_py

SYNTHETIC = {
    "seed": 0,
    "image_size": 56,
    "train_images": 48,
    "val_images": 8,
    "test_images": 8,
    "questions_per_image": 2,
    "images_per_shard": 24,
}
TINY_MODEL = [
    "model=tiny",
    "tokenizer=tiny",
    "model.hidden_size=32",
    "model.intermediate_size=64",
    "model.num_hidden_layers=2",
    "model.num_attention_heads=2",
]
SMALL_SYNTHETIC = [f"synthetic.{key}={value}" for key, value in SYNTHETIC.items()]
SMALL_RUN = [
    *SMALL_SYNTHETIC,
    "trainer.global_batch_size=2",
    "trainer.micro_batch_size=2",
    "trainer.log_every=1",
    "trainer.num_workers=0",
    "trainer.gradient_checkpointing=false",
    "trainer.precision=fp32",
]
NO_BENCHMARK = "trainer.benchmark_at_end=false"
# The real benchmark configs, a few items each, on the synthetic files laid out like the real ones.
COCO = ["benchmark.coco_caption.max_items=4", "benchmark.coco_caption.metrics=[Bleu,CIDEr]"]
VQAV2 = ["benchmark.vqav2.max_items=4", "benchmark.vqav2.reader.image_name='synth_test_{image_id:012d}.png'"]


@pytest.fixture(scope="module")
def user(tmp_path_factory) -> dict:
    """The cache the runs share and a `$LIBRA_DATA_DIR` holding the synthetic set in the layout of
    the real benchmark files (COCO Karpathy test, VQAv2 val)."""
    cache = tmp_path_factory.mktemp("cache")
    layout = synthetic_dataset(cache, **SYNTHETIC)
    data = tmp_path_factory.mktemp("data")
    (data / "coco" / "annotations").mkdir(parents=True)
    for split in ("train", "val", "test"):
        (data / "coco" / split).symlink_to(layout.image_root / split)
        (data / "coco" / "annotations" / f"coco_karpathy_{split}.json").symlink_to(
            layout.karpathy_file(split)
        )
    (data / "coco" / "val2014").symlink_to(layout.image_root / "test")
    (data / "vqav2").mkdir()
    (data / "vqav2" / "v2_OpenEnded_mscoco_val2014_questions.json").symlink_to(
        layout.vqa_questions_file("test")
    )
    (data / "vqav2" / "v2_mscoco_val2014_annotations.json").symlink_to(layout.vqa_annotations_file("test"))
    return {
        "env": {"LIBRA_CACHE_DIR": str(cache), "LIBRA_DATA_DIR": str(data)},
        "layout": layout,
        "cwd": tmp_path_factory.mktemp("work"),
    }


def run(user: dict, args: list[str], run_dir: Path) -> Path:
    result = run_py([*args, f"hydra.run.dir={run_dir}"], cwd=user["cwd"], env=user["env"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    (run_dir / "stdout.txt").write_text(result.stdout)
    return run_dir


def train_losses(run_dir: Path) -> list[float]:
    return [r["train/loss"] for r in tracking.read_metrics(run_dir / "metrics.jsonl") if "train/loss" in r]


@pytest.fixture(scope="module")
def stage1(user) -> Path:
    """experiment=pretrain on LAION-layout shards: visual expert only, ZeRO-2, COCO captions at the end."""
    shards = f"{user['layout'].folder}/laion/train-{{00000..00001}}.tar"
    args = ["experiment=pretrain", *TINY_MODEL, *SMALL_RUN, f"data.shards='{shards}'", "trainer.max_steps=3"]
    args += ["data.train.samples_per_epoch=8", "data.train.shuffle_buffer=8", "data.train.shuffle_initial=4"]
    args += ["trainer.eval_every=0", "trainer.checkpoint_every=2", "data.train.t2i_prob=0.5", *COCO]
    return run(user, args, user["cwd"] / "stage1")


@pytest.mark.slow
def test_pretrain_trains_the_visual_expert_and_benchmarks_coco(stage1):
    assert len(train_losses(stage1)) == 3
    printed = (stage1 / "stdout.txt").read_text()  # the config differences, not a 160-line dump
    assert "config (what differs from `python run.py`" in printed
    assert "data: ..." in printed and "# data=laion" in printed
    assert "freeze_language: True" in printed and "# experiment=pretrain" in printed
    metrics = json.loads((stage1 / "metrics.json").read_text())
    assert {"benchmark/coco_caption/CIDEr", "baseline/coco_caption/CIDEr"} <= set(metrics)
    predictions = json.loads((stage1 / "benchmark" / "coco_caption" / "predictions.json").read_text())
    assert len(predictions) == 4
    ds = json.loads((stage1 / "deepspeed_config.json").read_text())
    assert ds["zero_optimization"]["stage"] == 2  # the experiment's own DeepSpeed stage
    assert (stage1 / "checkpoints" / "step_000003").is_dir()
    assert (stage1 / "model_files" / "config.json").is_file()


@pytest.mark.slow
def test_instruct_starts_from_the_stage1_run_dir_and_from_its_export(stage1, user):
    """Stage 2 from the stage-1 run dir (its export is picked) and from the export folder itself: the
    same weights, hence the same first loss; the run ends with its VQAv2 + COCO benchmark."""
    layout = user["layout"]
    stage2 = ["experiment=instruct", *SMALL_RUN, f"data.annotation_file={layout.llava_file('train')}"]
    stage2 += [f"data.image_roots=[{layout.image_root}]", "data.train.image_token_count=18"]
    from_run_dir = run(
        user,
        [*stage2, f"model.init_from={stage1}", "trainer.max_steps=2", *COCO, *VQAV2],
        user["cwd"] / "stage2_from_run_dir",
    )
    assert len(train_losses(from_run_dir)) == 2
    metrics = json.loads((from_run_dir / "metrics.json").read_text())
    assert {"benchmark/vqav2/accuracy", "benchmark/coco_caption/CIDEr"} <= set(metrics)
    assert json.loads((from_run_dir / "deepspeed_config.json").read_text())["zero_optimization"]["stage"] == 3
    # what trained the export, through its base: stage 1 drew text-to-image samples, stage 2 none
    record = read_training_record(from_run_dir / "export")
    assert record["text_to_image_samples"] == 0 and record["init_from"] == str(stage1)
    assert record["base"]["text_to_image_samples"] > 0 and record["base"]["init_from"] is None
    assert trained_for_text_to_image(record) is True

    from_export = run(
        user,
        [
            *stage2,
            f"model.init_from={stage1 / 'export'}",
            "trainer.max_steps=1",
            "trainer.benchmark_at_end=false",
        ],
        user["cwd"] / "stage2_from_export",
    )
    assert train_losses(from_export)[0] == pytest.approx(train_losses(from_run_dir)[0], abs=1e-6)
    # stage 2 trains everything, starting from the stage-1 weights
    stage1_weights = load_file(stage1 / "export" / "model.safetensors")
    stage2_weights = load_file(from_export / "export" / "model.safetensors")
    assert stage1_weights.keys() == stage2_weights.keys()


@pytest.mark.slow
def test_benchmark_official_scores_a_run_dir(stage1, user, tmp_path):
    """experiment=benchmark_official with a run dir: the resolver picks its export, says so, and the
    scores are printed."""
    args = ["experiment=benchmark_official", f"checkpoint={stage1}", "trainer.precision=fp32", *COCO, *VQAV2]
    args += SMALL_SYNTHETIC
    result = run_py([*args, f"hydra.run.dir={tmp_path / 'bench'}"], cwd=user["cwd"], env=user["env"])
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"{stage1} is a run dir; using its final export {stage1 / 'export'}" in result.stdout
    assert "vqav2/accuracy" in result.stdout and "coco_caption/CIDEr" in result.stdout
    metrics = json.loads((tmp_path / "bench" / "metrics.json").read_text())
    assert "benchmark/vqav2/accuracy" in metrics


@pytest.mark.slow
def test_the_default_experiment_takes_either_scheduler(user, tmp_path):
    """`python run.py scheduler=constant`: the tiny experiment's own schedule is a scheduler option
    (conf/scheduler/tiny.yaml), so choosing another one replaces it whole instead of failing to compose."""
    common = [*TINY_MODEL, *SMALL_RUN, NO_BENCHMARK, "logger=none", "trainer.max_steps=8"]
    common += ["trainer.eval_every=0", "trainer.checkpoint_every=0", "optimizer.lr=1e-3"]
    curves = {}
    for option in ("constant", "tiny"):
        run_dir = run(user, [*common, f"scheduler={option}", "scheduler.warmup_steps=2"], tmp_path / option)
        rows = tracking.read_metrics(run_dir / "metrics.jsonl")
        curves[option] = [r["train/lr"] for r in rows if "train/lr" in r]
    assert len(curves["constant"]) == len(curves["tiny"]) == 8, curves
    # train/lr at step k is the rate of step k + 1: with a 2-step warm-up, step 1 logs the peak. Then it is
    # flat there, or a cosine from the peak that ends at the floor of 0.1 x the peak at the last step
    assert curves["constant"] == pytest.approx([1e-3] * 8), curves
    decay = curves["tiny"][1:]
    assert decay[0] == pytest.approx(1e-3), curves
    assert all(b < a for a, b in zip(decay, decay[1:])) and decay[-1] == pytest.approx(1e-4), curves
