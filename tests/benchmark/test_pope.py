"""POPE: the reference's yes/no reading and scores on hand-computed cases, its file reader, and the
task end to end on the runner with a tiny checkpoint (conf/benchmark/pope.yaml as shipped)."""

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from tiny_bench import CONF, make_cfg

from libra.benchmark.files import InputError
from libra.benchmark.pope import load_pope_questions, parse_yes_no, score_pope, score_pope_splits
from libra.benchmark.tasks import PopeTask


@pytest.mark.parametrize(
    "answer, parsed",
    [
        ("Yes", "yes"),
        ("No", "no"),
        ("no.", "no"),
        ("No, there is no dog in the image.", "no"),
        ("Yes, there is a dog. There is no cat.", "yes"),  # only the first sentence counts
        ("There is not a dog", "no"),
        ("no, it is a cat", "no"),  # the comma is deleted before splitting
        ("NO", "yes"),  # only "No", "no" and "not" are negations
        ("Not really", "yes"),
        ("nothing like that", "yes"),  # whole words only
        ("I don't think so", "yes"),
        ("No\nthere is none", "yes"),  # split on single spaces only: "No\nthere" is one word
        ("", "yes"),  # an empty answer (no image) counts as yes, as in the reference
    ],
)
def test_yes_no_parsing_follows_the_reference(answer, parsed):
    assert parse_yes_no(answer) == parsed


def test_scores_on_hand_computed_cases():
    # predicted y n y n y n n y against y y y n n n n y: TP 3 (0, 2, 7), FN 1 (1), FP 1 (4), TN 3
    labels = ["yes", "yes", "yes", "no", "no", "no", "no", "yes"]
    answers = ["Yes", "No", "yes", "No", "Yes.", "no", "There is no dog", "Yes"]
    scores = score_pope(labels, answers)
    assert (scores.tp, scores.fp, scores.tn, scores.fn) == (3, 1, 3, 1)
    assert scores.to_json() == {
        "accuracy": 0.75,
        "precision": 0.75,
        "recall": 0.75,
        "f1": 0.75,
        "yes_ratio": 0.5,
        "TP": 3,
        "FP": 1,
        "TN": 3,
        "FN": 1,
        "n": 8,
    }
    # all yes on 2 positives, 1 negative: precision 2/3, recall 1, F1 = 2 * (2/3) / (5/3) = 0.8
    biased = score_pope(["yes", "yes", "no"], ["yes", "Yes", "yes"])
    assert biased.precision == pytest.approx(2 / 3) and biased.recall == 1.0
    assert (
        biased.f1 == pytest.approx(0.8)
        and biased.yes_ratio == 1.0
        and biased.accuracy == pytest.approx(2 / 3)
    )
    # no "yes" at all: the reference divides by zero; here precision, recall and F1 are 0
    silent = score_pope(["yes", "no", "no", "no"], ["no", "no", "not", "No"])
    assert (silent.precision, silent.recall, silent.f1, silent.accuracy, silent.yes_ratio) == (
        0,
        0,
        0,
        0.75,
        0,
    )


def test_splits_and_their_mean():
    result = score_pope_splits(
        {"random": ["yes", "no"], "adversarial": ["yes", "no"]},
        {"random": ["yes", "no"], "adversarial": ["yes", "yes"]},
    )
    assert result["random"]["accuracy"] == 1.0 and result["adversarial"]["accuracy"] == 0.5
    assert result["mean"]["accuracy"] == 0.75
    assert result["mean"]["f1"] == pytest.approx((1.0 + 2 * 0.5 * 1.0 / 1.5) / 2)
    assert result["mean"]["yes_ratio"] == 0.75


def _write_pope(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _records(n: int, image: str) -> list[dict]:
    objects = ["circle", "square", "cross", "triangle"]
    return [
        {
            "question_id": i + 1,
            "image": image,
            "text": f"Is there a {objects[i % 4]} in the image?",
            "label": "yes" if i % 2 == 0 else "no",
        }
        for i in range(n)
    ]


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"question_id": 1, "image": "a.jpg", "text": "?"}', "missing key"),
        ('{"question_id": 1, "image": "a.jpg", "text": "?", "label": "maybe"}', "not 'yes' or 'no'"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_pope_files_name_the_line(tmp_path, line, message):
    path = tmp_path / "coco_pope_random.json"
    path.write_text(json.dumps(_records(1, "a.jpg")[0]) + "\n" + line + "\n")
    with pytest.raises(InputError, match=f"coco_pope_random.json:2: .*{message}"):
        load_pope_questions(path)


def test_duplicate_question_ids_are_refused(tmp_path):
    path = _write_pope(tmp_path / "p.json", _records(2, "a.jpg") + _records(1, "a.jpg"))
    with pytest.raises(InputError, match="p.json:3: question_id 1 appears twice"):
        load_pope_questions(path)


def test_task_keeps_splits_apart(tmp_path):
    files = {
        "random": str(_write_pope(tmp_path / "r.json", _records(4, "a.jpg"))),
        "adversarial": str(_write_pope(tmp_path / "a.json", _records(4, "a.jpg"))),
    }
    task = PopeTask(files, str(tmp_path), max_items=3)
    items = task.items()
    assert [i.id for i in items] == [
        "random/1",
        "random/2",
        "random/3",
        "adversarial/1",
        "adversarial/2",
        "adversarial/3",
    ]
    predictions = dict.fromkeys((i.id for i in items), "Yes")  # always yes
    predictions["adversarial/2"] = "No, there is not."
    metrics, per_item = task.score(items, predictions)
    assert metrics["random"]["accuracy"] == pytest.approx(2 / 3) and metrics["adversarial"]["accuracy"] == 1.0
    assert per_item == {i.id: (0.0 if i.id == "random/2" else 1.0) for i in items}
    headline = task.headline(metrics)
    assert headline["mean/accuracy"] == pytest.approx(5 / 6)
    assert set(headline) == {f"{s}/{m}" for s in ("random", "adversarial", "mean") for m in
                             ("accuracy", "precision", "recall", "f1", "yes_ratio")}  # fmt: skip
    rows = task.predictions_json(predictions)
    assert rows[4] == {"split": "adversarial", "question_id": 2, "text": "No, there is not.", "answer": "no"}
    assert not (tmp_path / "a.jpg").exists() and isinstance(items[0].make_sample().reason, str)  # skipped


@pytest.mark.slow
def test_pope_config_runs_on_the_runner(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """conf/benchmark/pope.yaml as shipped, on POPE-layout files whose images are synthetic ones."""
    from libra.benchmark.runner import evaluate
    from libra.data.synthetic import synthetic_dataset

    checkpoint, cache = tiny_checkpoint
    layout = synthetic_dataset(cache, **make_cfg(checkpoint, cache, tmp_path).synthetic)
    data = tmp_path / "data"
    (data / "pope").mkdir(parents=True)
    (data / "coco").mkdir()
    (data / "coco" / "val2014").symlink_to(layout.image_root / "test")
    image = sorted((layout.image_root / "test").iterdir())[0].name
    for split in ("random", "popular", "adversarial"):
        records = _records(3, image)
        if split == "popular":
            records[2]["image"] = "COCO_val2014_000000999999.jpg"  # missing: skipped and counted
        _write_pope(data / "pope" / f"coco_pope_{split}.json", records)
    monkeypatch.setenv("LIBRA_DATA_DIR", str(data))
    cfg = make_cfg(checkpoint, cache, tmp_path / "run", logger="none")
    cfg.benchmark = OmegaConf.load(CONF / "benchmark" / "pope.yaml")
    cfg.benchmark.pope.decoding.max_new_tokens = 4
    scores = evaluate(cfg)
    assert set(scores) == {
        f"benchmark/pope/{s}/{m}"
        for s in ("random", "popular", "adversarial", "mean")
        for m in ("accuracy", "precision", "recall", "f1", "yes_ratio")
    }
    metrics = json.loads((tmp_path / "run" / "pope" / "metrics.json").read_text())
    assert metrics["random"]["n"] == 3 and metrics["adversarial"]["TP"] + metrics["adversarial"]["FN"] == 2
    rows = json.loads((tmp_path / "run" / "pope" / "predictions.json").read_text())
    assert len(rows) == 9 and {r["answer"] for r in rows} <= {"yes", "no"}
    assert all(parse_yes_no(r["text"]) == r["answer"] for r in rows)
    assert metrics["skipped"] == {"missing_image": 1} and metrics["popular"]["n"] == 3
    assert "1 of 9 item(s) had no readable image" in capsys.readouterr().out
    assert [r["text"] for r in rows if r["split"] == "popular"][2] == ""
