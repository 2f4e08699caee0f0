"""The synthetic shapes dataset, written once into a cache folder in the SAME on-disk formats as
the real data, so training and benchmarking on it run through the real readers.

``synthetic_dataset(cache_dir, **params)`` generates (or finds) the folder
``<cache_dir>/synthetic-shapes-<fingerprint of params>/``:

    meta.json                                   parameters and counts; written last (completeness mark)
    images/{split}/synth_{split}_{id:012d}.png  every image once (COCO/VQA/LLaVA images)
    laion/{split}-{00000..}.tar                 webdataset shards: {key}.png + .txt + .json (img2dataset)
    coco/coco_karpathy_{split}.json             Karpathy layout: train one caption, val/test five
    coco/coco_karpathy_{split}_gt.json          COCO caption ground truth (val, test)
    vqa/v2_OpenEnded_mscoco_{split}_questions.json, vqa/v2_mscoco_{split}_annotations.json
    llava/llava_instruct_{split}.json           LLaVA conversations (some text-only), images under images/
    text/corpus_train.txt                       all training text, one line each (tokenizer training)

Splits are train / val / test with image ids 1.., 100001.., 200001.. and different random streams;
no val/test image is pixel-identical to a training image. Generation is a few seconds for a few
thousand images; the folder is built under a temporary name and renamed, so concurrent ranks and
interrupted runs never see half a dataset.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import webdataset as wds

from libra.durable_files import build_folder_once

from .coco_karpathy import karpathy_to_coco_ground_truth
from .shapes_scene import QA, all_questions, captions, draw_scene, human_answers, sample_scene

GENERATOR_VERSION = 1  # bump when the output of the same parameters changes
SPLITS = ("train", "val", "test")
ID_BASE = {"train": 0, "val": 100_000, "test": 200_000}
TEXT_ONLY_TURNS = (
    ("which shapes can appear in the pictures?", "circles, squares, triangles and crosses"),
    ("which colors can the shapes have?", "red, green, blue, yellow and purple"),
    ("how many shapes can a picture hold?", "one, two or three"),
    ("which backgrounds are there?", "white, black and gray"),
)
DESCRIBE = "describe the image briefly."


@dataclass(frozen=True)
class SyntheticShapesConfig:
    """Generator parameters; every one of them is part of the cache key."""

    seed: int = 0
    image_size: int = 56  # the tiny model's CLIP input; larger sizes draw the same scenes sharper
    train_images: int = 3000
    val_images: int = 300
    test_images: int = 500
    questions_per_image: int = 3
    images_per_shard: int = 500
    llava_rounds: int = 3  # at most this many question/answer rounds per conversation
    text_only_fraction: float = 0.05  # LLaVA entries without an image, as in the real mix

    def count(self, split: str) -> int:
        return {"train": self.train_images, "val": self.val_images, "test": self.test_images}[split]

    def fingerprint(self) -> str:
        text = json.dumps({"version": GENERATOR_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class SyntheticLayout:
    """Paths of a generated synthetic dataset (see the module docstring)."""

    folder: Path
    config: SyntheticShapesConfig

    @property
    def image_root(self) -> Path:
        return self.folder / "images"

    @property
    def meta(self) -> dict:
        return json.loads((self.folder / "meta.json").read_text())

    def laion_urls(self, split: str) -> str:
        shards = self.meta["splits"][split]["shards"]
        return str(self.folder / "laion" / f"{split}-{{00000..{shards - 1:05d}}}.tar")

    def karpathy_file(self, split: str) -> Path:
        return self.folder / "coco" / f"coco_karpathy_{split}.json"

    def ground_truth_file(self, split: str) -> Path:
        return self.folder / "coco" / f"coco_karpathy_{split}_gt.json"

    def vqa_questions_file(self, split: str) -> Path:
        return self.folder / "vqa" / f"v2_OpenEnded_mscoco_{split}_questions.json"

    def vqa_annotations_file(self, split: str) -> Path:
        return self.folder / "vqa" / f"v2_mscoco_{split}_annotations.json"

    def vqa_image_name(self, split: str) -> str:
        """The ``image_name`` pattern of ``VQAv2Questions`` for this split's images."""
        return f"{split}/synth_{split}_{{image_id:012d}}.png"

    def llava_file(self, split: str) -> Path:
        return self.folder / "llava" / f"llava_instruct_{split}.json"

    @property
    def text_corpus_file(self) -> Path:
        return self.folder / "text" / "corpus_train.txt"


def synthetic_dataset(cache_dir: str | Path, **params: Any) -> SyntheticLayout:
    """Generate the dataset for ``params`` (fields of ``SyntheticShapesConfig``) unless it exists."""
    known = {f.name for f in dataclasses.fields(SyntheticShapesConfig)}
    unknown = set(params) - known
    if unknown:
        raise TypeError(f"synthetic dataset: unknown parameter(s) {sorted(unknown)}; known: {sorted(known)}")
    config = SyntheticShapesConfig(**params)
    if min(config.count(split) for split in SPLITS) < 1 or config.image_size < 8:
        raise ValueError(f"synthetic dataset: every split needs >= 1 image and image_size >= 8, got {config}")
    folder = Path(cache_dir) / f"synthetic-shapes-{config.fingerprint()}"
    build_folder_once(folder, "meta.json", lambda tmp: _write_dataset(tmp, config))
    return SyntheticLayout(folder, config)


def _write_dataset(folder: Path, config: SyntheticShapesConfig) -> None:
    for sub in ("laion", "coco", "vqa", "llava", "text"):
        (folder / sub).mkdir(parents=True)
    seen: set[bytes] = set()  # pixel digests of earlier images: no test image repeats a train image
    meta = {"version": GENERATOR_VERSION, "config": dataclasses.asdict(config), "splits": {}}
    for split in SPLITS:
        meta["splits"][split] = _write_split(folder, config, split, seen)
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))


def _write_split(folder: Path, config: SyntheticShapesConfig, split: str, seen: set[bytes]) -> dict:
    rng = random.Random(f"{config.seed}/{split}")
    (folder / "images" / split).mkdir(parents=True)
    karpathy, questions, annotations, conversations, corpus = [], [], [], [], []
    answer_counts: Counter[str] = Counter()
    shard_count, sink = 0, None
    for position in range(config.count(split)):
        while True:
            scene = sample_scene(rng)
            image = draw_scene(scene, config.image_size)
            digest = hashlib.sha1(image.tobytes()).digest()
            if digest not in seen:
                seen.add(digest)
                break
        image_id = ID_BASE[split] + position + 1
        relative = f"{split}/synth_{split}_{image_id:012d}.png"
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        png = buffer.getvalue()
        (folder / "images" / relative).write_bytes(png)
        references = captions(scene)
        caption = rng.choice(references)  # training text: one variant per image, as in LAION

        if position % config.images_per_shard == 0:
            if sink is not None:
                sink.close()
            sink = wds.TarWriter(str(folder / "laion" / f"{split}-{shard_count:05d}.tar"))
            shard_count += 1
        key = f"{image_id:09d}"
        info = {
            "caption": caption,
            "key": key,
            "width": image.width,
            "height": image.height,
            "status": "success",
        }
        sink.write({"__key__": key, "png": png, "txt": caption, "json": info})

        if split == "train":
            karpathy.append({"image": relative, "caption": caption, "image_id": image_id})
        else:
            karpathy.append({"image": relative, "caption": references})

        candidates = all_questions(scene, rng)
        qas = rng.sample(candidates, min(config.questions_per_image, len(candidates)))
        for number, qa in enumerate(qas):
            question_id = image_id * 10 + number
            answers = human_answers(qa.answer, rng)
            answer_counts[qa.answer] += 1
            questions.append({"image_id": image_id, "question": qa.question, "question_id": question_id})
            annotations.append(_annotation(image_id, question_id, qa, answers))

        conversations.append(_conversation(f"synth_{split}_{image_id}", relative, qas, caption, config, rng))
        corpus.append(caption)
        corpus.extend(f"{qa.question} {qa.answer}" for qa in qas)
        if rng.random() < config.text_only_fraction:
            conversations.append(_text_only(f"synth_{split}_{image_id}_text", rng))
    if sink is not None:
        sink.close()

    _dump(folder / "coco" / f"coco_karpathy_{split}.json", karpathy)
    if split != "train":
        ground_truth = karpathy_to_coco_ground_truth(folder / "coco" / f"coco_karpathy_{split}.json")
        _dump(folder / "coco" / f"coco_karpathy_{split}_gt.json", ground_truth)
    common = {"info": {"description": f"synthetic shapes, {split} split"}, "license": {"name": "synthetic"}}
    common |= {"data_type": "mscoco", "data_subtype": f"synthetic_{split}"}
    _dump(
        folder / "vqa" / f"v2_OpenEnded_mscoco_{split}_questions.json",
        {**common, "task_type": "Open-Ended", "questions": questions},
    )
    _dump(folder / "vqa" / f"v2_mscoco_{split}_annotations.json", {**common, "annotations": annotations})
    _dump(folder / "llava" / f"llava_instruct_{split}.json", conversations)
    if split == "train":
        corpus.extend(
            turn["value"].replace("<image>\n", "") for c in conversations for turn in c["conversations"]
        )
        (folder / "text" / "corpus_train.txt").write_text("\n".join(corpus) + "\n")
    return {
        "images": config.count(split),
        "shards": shard_count,
        "questions": len(questions),
        "conversations": len(conversations),
        "answers": dict(answer_counts.most_common()),
    }


def _annotation(image_id: int, question_id: int, qa: QA, answers: list[str]) -> dict:
    return {
        "question_type": qa.question_type,
        "multiple_choice_answer": Counter(answers).most_common(1)[0][0],
        "answers": [
            {"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)
        ],
        "image_id": image_id,
        "answer_type": qa.answer_type,
        "question_id": question_id,
    }


def _conversation(
    entry_id: str, image: str, qas: list[QA], caption: str, config: SyntheticShapesConfig, rng: random.Random
) -> dict:
    """1..llava_rounds rounds of the image's questions plus, sometimes, a caption request; the image
    tag opens the first user turn, as in LLaVA's data."""
    rounds = [(qa.question, qa.answer) for qa in qas] + [(DESCRIBE, caption)]
    rng.shuffle(rounds)
    rounds = rounds[: rng.randint(1, max(1, config.llava_rounds))]
    turns = []
    for number, (question, answer) in enumerate(rounds):
        turns.append({"from": "human", "value": f"<image>\n{question}" if number == 0 else question})
        turns.append({"from": "gpt", "value": answer})
    return {"id": entry_id, "image": image, "conversations": turns}


def _text_only(entry_id: str, rng: random.Random) -> dict:
    question, answer = rng.choice(TEXT_ONLY_TURNS)
    return {
        "id": entry_id,
        "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
    }


def _dump(path: Path, content: Any) -> None:
    path.write_text(json.dumps(content))
