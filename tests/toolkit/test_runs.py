"""run.py end to end on the tiny model (slow): a 2-job multirun read back from its W&B offline files;
task=chat, task=generate and task=benchmark on the export of one of its jobs; cluster=torchrun with
two ranks. (Every experiment's one-step run is tests/train/test_experiments.py.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from libra import tracking
from libra.validation import ConfigError, validate

from .conftest import compose_config, run_py
from .wandb_files import offline_runs

# One optimizer step of two samples, no benchmark: what every run test needs, as fast as it goes.
ONE_STEP = [
    "trainer.max_steps=1",
    "trainer.global_batch_size=2",
    "trainer.micro_batch_size=2",
    "trainer.log_every=1",
    "trainer.eval_batches=1",
    "trainer.num_workers=0",
    "trainer.benchmark_at_end=false",
    # a small synthetic set: generating it and training the tiny tokenizer on it takes seconds
    "synthetic.train_images=48",
    "synthetic.val_images=8",
    "synthetic.test_images=8",
    "synthetic.images_per_shard=48",
]


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory) -> dict:
    """One synthetic-data / tiny-tokenizer cache for every run of this module."""
    return {"LIBRA_CACHE_DIR": str(tmp_path_factory.mktemp("libra-cache"))}


@pytest.fixture(scope="module")
def multirun(tmp_path_factory, cache_env) -> Path:
    """``python run.py -m ... optimizer.lr=1e-3,3e-3``: the sweep dir of its two jobs."""
    cwd = tmp_path_factory.mktemp("multirun")
    result = run_py(["-m", *ONE_STEP, "optimizer.lr=1e-3,3e-3"], cwd=cwd, env=cache_env)
    assert result.returncode == 0, result.stderr[-4000:]
    (sweep_dir,) = (cwd / "multirun" / "tiny").iterdir()
    return sweep_dir


@pytest.mark.slow
def test_multirun_gives_one_wandb_run_per_job_in_one_group(multirun):
    runs = offline_runs(multirun)
    assert len(runs) == 2
    # one group for this sweep alone (its dir's timestamp), not the experiment's group of single runs
    assert {r.group for r in runs} == {f"tiny-sweep-{multirun.name}"}
    assert {r.job_type for r in runs} == {"train"}
    assert len({r.run_id for r in runs}) == 2
    by_lr = {r.config["optimizer"]["lr"]: r for r in runs}
    assert sorted(by_lr) == [1e-3, 3e-3]
    # named by what the sweep varies; the overrides every job shares are left to the group
    assert {r.name for r in runs} == {"tiny/lr=0.001", "tiny/lr=0.003"}
    assert all(r.tags == ["tiny", "train", "sweep"] for r in runs)
    for job, lr in ((0, 1e-3), (1, 3e-3)):
        run = by_lr[lr]
        assert run.exit_code == 0
        assert run.config["run_dir"] == str(multirun / str(job))  # the resolved config, not ${hydra:...}
        assert run.config["trainer"]["max_steps"] == 1 and "tiny" in run.tags
        # the same numbers as the run's metrics.jsonl
        jsonl = tracking.read_metrics(multirun / str(job) / "metrics.jsonl")
        train_records = [r for r in jsonl if "train/loss" in r]
        wandb_rows = [row for row in run.history if "train/loss" in row]
        assert len(train_records) == len(wandb_rows) == 1
        assert wandb_rows[0]["train/loss"] == pytest.approx(train_records[0]["train/loss"])
        assert wandb_rows[0]["train/lr"] == pytest.approx(train_records[0]["train/lr"])
        for name in ("train/grad_norm", "perf/tokens_per_s", "perf/step_time"):
            assert name in wandb_rows[0]
        assert (multirun / str(job) / "curves.png").is_file()


@pytest.mark.slow
def test_chat_answers_like_the_model_on_the_documented_prompt(multirun, tmp_path, data_dir, cache_env):
    """task=chat builds image block + newline + text in the v1 template and decodes greedily: the
    answer it saves equals the model's own greedy continuation of that prompt. The image is given as
    ~/<file>, quoted, so that the shell leaves the ~ to run.py."""
    from libra.model import LibraForCausalLM
    from libra.tokenizer.processor import LibraProcessor
    from libra.tokenizer.samples import ConversationSample, Turn

    export = multirun / "0" / "export"
    home = tmp_path / "home"
    home.mkdir()
    image = home / "duck_drawn.png"
    shutil.copy(data_dir / "processor_tiny" / "images" / "duck_drawn.png", image)
    prompt = "what colour is the shape?"
    result = run_py(
        [
            "task=chat",
            f"checkpoint={export}",
            "image='~/duck_drawn.png'",
            f"prompt='{prompt}'",
            "max_new_tokens=6",
        ],
        cwd=tmp_path,
        env={**cache_env, "HOME": str(home)},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    (saved,) = tmp_path.glob("outputs/tiny/*/chat.json")
    record = json.loads(saved.read_text())
    assert record["prompt"] == prompt and record["image"] == str(image)
    assert f"ASSISTANT: {record['answer']}" in result.stdout

    model = LibraForCausalLM.from_pretrained(export).eval()
    processor = LibraProcessor.from_pretrained(export)
    sample = ConversationSample([Turn("user", f"<image>\n{prompt}")], [image_open(image)], key="ref")
    inputs = processor([sample], generation=True)
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=6)
    expected = processor.decode(ids[:, 0, inputs["input_ids"].shape[-1] :]).text.strip()
    assert record["answer"] == expected


def image_open(path: Path):
    from PIL import Image

    return Image.open(path).convert("RGB")


@pytest.mark.slow
def test_generate_writes_one_image_at_the_tokenizer_resolution(multirun, tmp_path, cache_env):
    export = multirun / "0" / "export"
    args = ["task=generate", f"checkpoint={export}", "prompt='a red circle'"]
    result = run_py(args, cwd=tmp_path, env=cache_env)
    assert result.returncode == 0, result.stderr[-4000:]
    (png,) = tmp_path.glob("outputs/tiny/*/generated_0.png")
    from PIL import Image

    assert Image.open(png).size == (56, 56)  # the tiny CLIP's input size, decoded from 4x4 codes
    record = json.loads(png.with_name("generate.json").read_text())
    # the tiny default trains on conversations and captions only: the task says so instead of
    # pretending its picture follows the prompt
    assert record == {"prompt": "a red circle", "images": [str(png)], "trained_for_text_to_image": False}
    assert "was not trained for text-to-image" in result.stdout
    training = json.loads((export / "training.json").read_text())
    assert training["text_to_image_samples"] == 0 and training["steps"] == 1 and training["init_from"] is None


@pytest.mark.slow
def test_exported_checkpoint_passes_the_shape_rules_and_a_broken_one_fails(multirun, tmp_path, hydra_cleared):
    export = multirun / "0" / "export"
    validate(compose_config(["task=generate", f"checkpoint={export}", "prompt=x"]))
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in export.iterdir():
        (broken / item.name).symlink_to(item)
    (broken / "config.json").unlink()
    config = json.loads((export / "config.json").read_text())
    config["contiguous_signal_size"] *= 2
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="contiguous_signal_size=.*selected layers"):
        validate(compose_config(["task=generate", f"checkpoint={broken}", "prompt=x"]))


@pytest.mark.slow
def test_cluster_torchrun_runs_two_ranks_on_one_config_and_one_run_dir(tmp_path, cache_env):
    args = [
        "cluster=torchrun",
        "cluster.gpus_per_node=2",
        "cluster.master_port=29613",
        "deepspeed=zero2",
        *ONE_STEP,
    ]
    args = [a for a in args if not a.startswith("trainer.global_batch_size")] + [
        "trainer.global_batch_size=4"
    ]
    result = run_py(args, cwd=tmp_path, env=cache_env)
    assert result.returncode == 0, result.stderr[-4000:]
    (run_dir,) = (tmp_path / "outputs" / "tiny").iterdir()  # one run dir, not one per rank
    ds = json.loads((run_dir / "deepspeed_config.json").read_text())
    assert (ds["train_batch_size"], ds["gradient_accumulation_steps"]) == (4, 1)  # 2 ranks x micro 2
    assert ds["zero_optimization"]["stage"] == 2
    assert (run_dir / "export" / "config.json").is_file()
    (run,) = offline_runs(run_dir / "wandb")  # rank 0 only
    assert run.config["cluster"]["gpus_per_node"] == 2 and run.exit_code == 0


@pytest.mark.slow
def test_task_benchmark_scores_the_export_and_logs_the_scores(multirun, tmp_path, cache_env):
    export = multirun / "0" / "export"
    small = [a for a in ONE_STEP if a.startswith("synthetic.")]  # the data the model was trained on
    args = ["task=benchmark", f"checkpoint={export}", "benchmark=synthetic", *small]
    args += ["benchmark.synthetic_vqa.max_items=8", "benchmark.synthetic_caption.max_items=4"]
    result = run_py(args, cwd=tmp_path, env=cache_env)
    assert result.returncode == 0, result.stderr[-4000:]
    (run_dir,) = (tmp_path / "outputs" / "tiny").iterdir()
    scores = {k: v for r in tracking.read_metrics(run_dir / "metrics.jsonl") for k, v in r.items()}
    assert 0 <= scores["benchmark/synthetic_vqa/accuracy"] <= 100
    assert scores["benchmark/synthetic_caption/CIDEr"] >= 0
    (run,) = offline_runs(run_dir / "wandb")
    assert (run.job_type, run.group, run.exit_code) == ("benchmark", "tiny", 0)
    assert any("benchmark/synthetic_vqa/samples/_type" in row for row in run.history)  # the sample table


@pytest.mark.slow
def test_chat_refuses_a_prompt_over_the_context(multirun, tmp_path, cache_env):
    export = multirun / "0" / "export"
    context = json.loads((export / "config.json").read_text())["max_position_embeddings"]
    prompt = " ".join(["circle"] * context)
    result = run_py(["task=chat", f"checkpoint={export}", f"prompt='{prompt}'"], cwd=tmp_path, env=cache_env)
    assert result.returncode != 0
    assert f"exceed the model's context of {context} tokens" in result.stderr
    assert not list(tmp_path.glob("outputs/tiny/*/chat.json"))


@pytest.mark.slow
def test_training_prints_one_line_per_log_step_and_no_bar_into_a_log(tmp_path, cache_env):
    """stdout and stderr are pipes here, as in a CI or SLURM log: the lines alone, no progress bar."""
    import re

    steps = [o for o in ONE_STEP if not o.startswith("trainer.max_steps")] + ["trainer.max_steps=3"]
    result = run_py([*steps, "logger=none"], cwd=tmp_path, env=cache_env)
    assert result.returncode == 0, result.stderr[-4000:]
    number = r"(\d+\.\d{4}|nan)"
    line = re.compile(
        rf"\[libra\] step (\d)/3 \| loss {number}( \((text|image) {number}(, image {number})?\))? "
        r"\| lr \d\.\d\de[-+]\d\d \| [\d,]+ tok/s \| ETA (\d+:\d\d:\d\d|\?)"
    )
    lines = [m for m in map(line.fullmatch, result.stdout.splitlines()) if m]
    assert [int(m.group(1)) for m in lines] == [1, 2, 3], result.stdout[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "tiny").iterdir()
    logged = [r for r in tracking.read_metrics(run_dir / "metrics.jsonl") if "train/loss" in r]
    assert [m.group(2) for m in lines] == [f"{r['train/loss']:.4f}" for r in logged]  # the logged numbers
    assert "train:" not in result.stderr and "\r" not in result.stderr  # no tqdm bar off a terminal
    # the tiny experiment's 10-step warm-up outlasts these 3 steps: said once, at the start
    note = "[libra] note: scheduler.warmup_steps=10 is longer than trainer.max_steps=3: the learning rate"
    assert result.stdout.count(note) == 1 and "ends at 30% of optimizer.lr" in result.stdout
