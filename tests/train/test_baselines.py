"""The majority baselines work for every task in conf/benchmark: a baseline from the task's training
split where its config names one and the files are there, and a plain "no majority baseline" line
otherwise, never an error at the end of a run."""

import json
from collections import Counter
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from libra.data.synthetic import synthetic_dataset
from libra.train.baselines import baseline_table, majority_prediction, most_frequent

CONF = Path(__file__).resolve().parents[2] / "conf"
NAMES = sorted(p.stem for p in (CONF / "benchmark").glob("*.yaml"))
SYNTHETIC = {"seed": 0, "image_size": 56, "train_images": 24, "val_images": 4, "test_images": 6}


def _benchmark(name: str, cache: Path):
    overrides = [
        f"benchmark={name}",
        f"cache_dir={cache}",
        *(f"synthetic.{k}={v}" for k, v in SYNTHETIC.items()),
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(config_name="config", overrides=overrides).benchmark


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize("name", NAMES)
def test_every_task_config_gets_a_baseline_or_says_why_not(name, cache, tmp_path, monkeypatch):
    monkeypatch.setenv("LIBRA_DATA_DIR", str(tmp_path / "no-data-here"))
    tasks = _benchmark(name, cache)
    scores, lines = baseline_table(tasks, {})
    for task in tasks:
        if task.startswith("synthetic"):  # the synthetic set has every split
            assert any(key.startswith(f"baseline/{task}/") for key in scores), lines
            assert any(line.startswith(f"  (baseline answer for {task}:") for line in lines)
        else:  # real data: no train split in the config, or its files are not here
            assert not any(key.startswith(f"baseline/{task}/") for key in scores)
            (reason,) = [line for line in lines if line.startswith(f"  (no majority baseline for {task}:")]
            expected = "train_split: null" if tasks[task].train_split is None else "could not be read"
            assert expected in reason


def test_real_layout_tasks_take_their_training_files(cache, tmp_path, monkeypatch):
    """vqav2 and coco_caption as shipped, on the synthetic set laid out like VQAv2 and COCO Karpathy."""
    layout = synthetic_dataset(cache, **SYNTHETIC)
    data = tmp_path / "data"
    (data / "vqav2").mkdir(parents=True)
    (data / "coco" / "annotations").mkdir(parents=True)
    for split, official in (("train", "train2014"), ("test", "val2014")):
        (data / "vqav2" / f"v2_OpenEnded_mscoco_{official}_questions.json").symlink_to(
            layout.vqa_questions_file(split)
        )
        (data / "vqav2" / f"v2_mscoco_{official}_annotations.json").symlink_to(
            layout.vqa_annotations_file(split)
        )
        (data / "coco" / "annotations" / f"coco_karpathy_{split}.json").symlink_to(
            layout.karpathy_file(split)
        )
    monkeypatch.setenv("LIBRA_DATA_DIR", str(data))
    tasks = _benchmark("official", cache)
    train = json.loads(layout.vqa_annotations_file("train").read_text())["annotations"]
    counts = Counter(most_frequent(a["answer"] for a in ann["answers"]) for ann in train)
    top = max(counts.values())
    assert majority_prediction(tasks.vqav2) == min(a for a, c in counts.items() if c == top)
    scores, lines = baseline_table(tasks, {"benchmark/vqav2/accuracy": 50.0})
    assert set(scores) >= {"baseline/vqav2/accuracy", "baseline/coco_caption/CIDEr"}
    assert 0.0 <= scores["baseline/vqav2/accuracy"] <= 100.0
    assert any(line.startswith("vqav2/accuracy") and "50.000" in line for line in lines)


def test_tasks_without_a_baseline_still_list_the_model_scores(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("LIBRA_DATA_DIR", str(tmp_path))
    _, lines = baseline_table(_benchmark("pope", cache), {"benchmark/pope/mean/f1": 0.5})
    assert lines[1].split() == ["pope/mean/f1", "0.500", "-"]
    assert lines[2].startswith("  (no majority baseline for pope: its config names no training split")
