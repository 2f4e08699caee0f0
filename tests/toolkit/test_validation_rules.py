"""libra.validation rules on hand-made configs: each problem names the key and the fixing override."""

import copy
import io

import pytest
from omegaconf import OmegaConf
from PIL import Image

from libra.validation import ConfigError, validate

from .conftest import compose_config
from .conftest import shaped_checkpoint as _checkpoint

BASE = {
    "task": "train",
    "seed": 42,
    "checkpoint": None,
    "resume": None,
    "objective": None,
    "prompt": None,
    "image": None,
    "max_new_tokens": 16,
    "temperature": 0.0,
    "cluster": {"launcher": "local", "nodes": 1, "gpus_per_node": 1},
    "trainer": {"global_batch_size": 8, "micro_batch_size": 4, "precision": "fp32", "grad_clip": 1.0},
    "deepspeed": {"stage": 0, "offload_optimizer": False, "offload_param": False},
    "data": {"shards": "/data/{0..9}.tar"},
}


def _cfg(**changes):
    cfg = OmegaConf.create(copy.deepcopy(BASE))
    for key, value in changes.items():
        OmegaConf.update(cfg, key.replace("__", "."), value, force_add=True)
    return cfg


def _problems(cfg) -> str:
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    return str(info.value)


def test_base_config_is_valid():
    validate(_cfg())


def test_global_batch_must_divide_by_micro_batch_times_world():
    msg = _problems(
        _cfg(cluster__launcher="torchrun", cluster__gpus_per_node=2, trainer__global_batch_size=12)
    )
    assert "trainer.global_batch_size: 12 is not a multiple of" in msg
    assert "world size (2) = 8" in msg
    assert "fix: trainer.global_batch_size=16" in msg


def test_parameter_offload_needs_zero3():
    msg = _problems(_cfg(deepspeed__stage=2, deepspeed__offload_param=True))
    assert "deepspeed.offload_param: parameter offload needs ZeRO-3" in msg
    assert "deepspeed=zero3_offload" in msg
    validate(_cfg(deepspeed__stage=3, deepspeed__offload_param=True))


def test_optimizer_offload_needs_zero():
    assert "deepspeed=zero2_offload" in _problems(_cfg(deepspeed__offload_optimizer=True))


def test_types_and_choices_are_checked():
    msg = _problems(_cfg(trainer__micro_batch_size="four", trainer__precision="fp8", task="deploy"))
    assert "trainer.micro_batch_size: 'four' is a str, expected int" in msg
    assert "trainer.precision: 'fp8' is not one of fp32 | bf16" in msg
    assert "task: 'deploy' is not one of train | benchmark | chat | generate | serve | demo" in msg
    assert "3 problem(s)" in msg


def test_bool_is_not_an_int():
    assert "cluster.nodes: True is a bool" in _problems(_cfg(cluster__nodes=True))


def test_local_launcher_runs_one_process():
    msg = _problems(_cfg(cluster__gpus_per_node=4))
    assert "cluster=torchrun cluster.gpus_per_node=4" in msg


def test_torchrun_on_several_nodes_needs_its_node_rank():
    msg = _problems(_cfg(cluster__launcher="torchrun", cluster__nodes=2))
    assert "cluster.node_rank: None: with 2 nodes and static rendezvous each node needs its rank" in msg
    assert "cluster.node_rank=<0..1>  (or cluster.rdzv_id=<job id> for c10d)" in msg


def test_required_values_of_used_groups():
    msg = _problems(_cfg(data__shards="???"))
    assert "data.shards: is required (???)" in msg
    # task=chat does not read the training data: its ??? does not matter
    assert "data.shards" not in _problems(_cfg(task="chat", data__shards="???"))


def test_inference_tasks_need_checkpoint_and_prompt(tmp_path, data_dir):
    msg = _problems(_cfg(task="chat"))
    assert "checkpoint: task=chat needs a checkpoint" in msg
    assert "prompt: task=chat needs a prompt" in msg
    folder = str(_checkpoint(tmp_path, data_dir))
    missing = str(tmp_path / "missing.jpg")
    msg = _problems(_cfg(task="chat", checkpoint=folder, prompt="hi", image=missing))
    assert f"image: {missing!r} is not a file" in msg
    validate(_cfg(task="generate", checkpoint=folder, prompt="a red bus"))


def test_a_chat_image_under_home_is_found_with_a_tilde(tmp_path, data_dir, monkeypatch):
    folder = str(_checkpoint(tmp_path, data_dir))
    (tmp_path / "home").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "home" / "cat.png")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    validate(_cfg(task="chat", checkpoint=folder, prompt="hi", image="~/cat.png"))
    assert "image: '~/dog.png' is not a file" in _problems(
        _cfg(task="chat", checkpoint=folder, prompt="hi", image="~/dog.png")
    )


def test_a_chat_image_that_cannot_be_decoded_is_refused_before_the_model_loads(tmp_path, data_dir):
    folder = str(_checkpoint(tmp_path, data_dir))
    (tmp_path / "notes.txt").write_text("not a picture")
    huge = io.BytesIO()
    Image.new("L", (10000, 10000)).save(huge, format="PNG")
    (tmp_path / "huge.png").write_bytes(huge.getvalue()[:200])  # the header: 10000 x 10000 pixels
    chat = {"task": "chat", "checkpoint": folder, "prompt": "hi"}
    notes = _problems(_cfg(**chat, image=str(tmp_path / "notes.txt")))
    assert "notes.txt' is not an image Pillow can read" in notes and "fix: image=<path of a JPEG" in notes
    huge_problem = _problems(_cfg(**chat, image=str(tmp_path / "huge.png")))
    assert "huge.png' is too large" in huge_problem and "100000000 pixels" in huge_problem


def test_a_seed_outside_torch_range_is_refused():
    assert "seed: 18446744073709551616 must be in [-9223372036854775808, 18446744073709551615]" in (
        _problems(_cfg(seed=2**64))
    )
    validate(_cfg(seed=2**64 - 1))


def test_resume_is_auto_or_a_run_dir(tmp_path):
    assert "resume=auto" in _problems(_cfg(resume=str(tmp_path / "nope")))
    validate(_cfg(resume="auto"))
    validate(_cfg(resume=str(tmp_path)))


def test_unknown_key_is_reported_not_crashed():
    cfg = _cfg()
    del cfg.trainer["precision"]
    assert "trainer.precision: is not set" in _problems(cfg)


def test_offload_flags_default_to_off_when_left_out():
    cfg = _cfg()
    del cfg.deepspeed["offload_param"]
    del cfg.deepspeed["offload_optimizer"]
    validate(cfg)


def test_checkpoint_model_and_vision_tokenizer_agree(tmp_path, data_dir):
    folder = _checkpoint(tmp_path, data_dir)
    validate(_cfg(task="benchmark", checkpoint=str(folder)))


def test_clip_width_times_layers_is_the_signal_size(tmp_path, data_dir):
    # 2048: the official code default (docs/design.md B14)
    folder = _checkpoint(tmp_path, data_dir, contiguous_signal_size=2048)
    msg = _problems(_cfg(task="benchmark", checkpoint=str(folder)))
    assert "contiguous_signal_size=2048, but CLIP width 32 x 4 selected layers gives 128" in msg
    assert "fix: set contiguous_signal_size to 128" in msg


def test_image_token_count_of_model_and_tokenizer(tmp_path, data_dir):
    folder = _checkpoint(tmp_path, data_dir, max_vision_token_length=578)
    msg = _problems(_cfg(task="chat", prompt="hi", checkpoint=str(folder)))
    assert "max_vision_token_length=578, but the vision tokenizer's image length gives 18" in msg


def test_stage_two_start_folder_is_checked(tmp_path, data_dir):
    folder = _checkpoint(tmp_path, data_dir, vision_vocab_size=514)
    msg = _problems(_cfg(model__init_from=str(folder)))
    assert (
        "model.init_from:" in msg and "vision_vocab_size=514, but codebook_size + boi + eoi gives 18" in msg
    )


def test_folder_without_model_is_refused(tmp_path):
    msg = _problems(_cfg(task="benchmark", checkpoint=str(tmp_path)))
    assert "not a model folder (config.json + *.safetensors)" in msg and "pass one of those" in msg


@pytest.mark.parametrize(
    ("file", "text"),
    [
        ("config.json", "{bad"),
        ("config.json", "[1, 2]"),
        ("vision_tokenizer_config.yaml", "a: [b"),
        ("vision_tokenizer_config.yaml", "a: 1"),
    ],
)
def test_unreadable_checkpoint_files_are_a_problem_not_a_traceback(tmp_path, data_dir, file, text):
    folder = _checkpoint(tmp_path, data_dir)
    (folder / file).write_text(text)
    msg = _problems(_cfg(task="benchmark", checkpoint=str(folder)))
    assert f"checkpoint: {folder / file} is unreadable" in msg
    assert "re-export or re-download it" in msg


def test_a_run_dir_whose_export_is_damaged_is_a_problem_not_a_traceback(tmp_path, data_dir):
    export = _checkpoint(tmp_path, data_dir).rename(tmp_path / "export")
    (export / "model.safetensors").write_bytes(b"\x00" * 7)  # cut short: not even a header
    msg = _problems(_cfg(task="benchmark", checkpoint=str(tmp_path)))
    assert f"checkpoint: {export / 'model.safetensors'} is damaged" in msg


def test_a_checkpoint_under_home_is_named_with_tilde(tmp_path, data_dir, monkeypatch):
    """`checkpoint='~/...'` (quoted, or from a config file) is what the resolver loads: validation
    expands ~ the same way, checks the folder and does not refuse it as missing."""
    monkeypatch.setenv("HOME", str(tmp_path))
    _checkpoint(tmp_path, data_dir)  # tmp_path/ckpt
    validate(_cfg(task="generate", checkpoint="~/ckpt", prompt="a red bus"))
    _checkpoint(tmp_path / "other", data_dir, vision_vocab_size=514)
    msg = _problems(_cfg(model__init_from="~/other/ckpt"))
    assert "model.init_from:" in msg and "vision_vocab_size=514" in msg


def test_resume_under_home_is_named_with_tilde(tmp_path, monkeypatch):
    """`resume='~/...'` is expanded by validation and by the trainer's resolver alike."""
    from libra.train.checkpoint import resolve_resume

    monkeypatch.setenv("HOME", str(tmp_path))
    step = tmp_path / "run" / "checkpoints" / "step_3"
    step.mkdir(parents=True)
    validate(_cfg(resume="~/run"))
    assert resolve_resume("~/run/checkpoints/step_3", tmp_path / "elsewhere") == step
    assert "resume: '~/missing' is neither auto nor a run dir" in _problems(_cfg(resume="~/missing"))


def test_benchmark_precision_follows_training():
    msg = _problems(_cfg(benchmark__precision="bf16"))
    assert "benchmark.precision: 'bf16' differs from trainer.precision='fp32'" in msg
    assert "fix: benchmark.precision=fp32" in msg
    validate(_cfg(benchmark__precision="fp32"))


def test_interpolation_to_a_key_of_another_choice_is_named():
    cfg = _cfg()
    cfg.tokenizer = {"cache_dir": "${data.cache_dir}"}
    msg = _problems(cfg)
    assert "tokenizer.cache_dir: ${data.cache_dir} does not resolve" in msg
    assert "fix: pick config groups that go together" in msg  # no data option defines cache_dir


@pytest.mark.parametrize(
    ("overrides", "fix"),
    [
        (["model=libra_7b"], "tokenizer.text_folder is defined by tokenizer=libra: choose it"),
        (
            ["tokenizer=from_pretrained"],
            "model.init_from is defined by model=from_pretrained or model=libra_11b: choose one of them",
        ),
    ],
)
def test_a_key_of_another_group_option_names_the_options_that_define_it(overrides, fix, hydra_cleared):
    """Group options that go together (model=libra_7b reads the LLaMA folder from tokenizer=libra):
    the fix names the options whose yaml defines the missing key, and the `+key=` that adds it."""
    with pytest.raises(ConfigError) as info:
        validate(compose_config(overrides))
    missing = fix.split(" ")[0]
    assert f"fix: {fix}, or add +{missing}=<value>" in str(info.value)


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.log_every=0", "trainer.log_every: 0 must be > 0"),
        ("trainer.max_steps=-5", "trainer.max_steps: -5 must be > 0"),
        # (a wrong type, e.g. optimizer.lr=abc, already fails at composition: test_config_schema.py)
        ("scheduler.warmup_ratio=1.5", "scheduler.warmup_ratio: 1.5 must be in [0, 1]"),
        ("optimizer.betas=[0.9,1.0]", "optimizer.betas: [0.9, 1] each value must be in [0, 1)"),
        ("optimizer.lr=0", "optimizer.lr: 0 must be > 0"),
        ("trainer.checkpoint_every=-1", "trainer.checkpoint_every: -1 must be >= 0"),
        ("trainer.max_bad_steps=0", "trainer.max_bad_steps: 0 must be > 0"),
        ("print_config=yaml", "print_config: 'yaml' is not one of diff | full | none"),
        ("synthetic.train_images=0", "synthetic.train_images: 0 must be > 0"),
        ("synthetic.image_size=-8", "synthetic.image_size: -8 must be > 0"),
        ("serve.port=70000", "serve.port: 70000 must be in [1, 65535]"),
    ],
)
def test_range_rules_reject_bad_values_before_any_work(override, message, hydra_cleared):
    with pytest.raises(ConfigError) as error:
        validate(compose_config([override]))
    assert message in str(error.value)


def test_benchmarks_during_training_are_refused_with_zero3_before_any_work(hydra_cleared):
    """The recipe could only find out at the first benchmark step, after training up to it."""
    msg = _problems(compose_config(["deepspeed=zero3", "trainer.benchmark_every=10"]))
    assert "trainer.benchmark_every: 10: benchmarks during training do not work with ZeRO-3" in msg
    assert "fix: trainer.benchmark_every=0" in msg
    validate(compose_config(["deepspeed=zero2", "trainer.benchmark_every=10"]))
    validate(compose_config(["deepspeed=zero3", "trainer.benchmark_every=0"]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optimizer.betas=[0.9]"], "optimizer.betas: [0.9] has 1 value(s), needs exactly 2"),
        # AdamW would drop the third silently
        (["optimizer.betas=[0.9,0.99,0.999]"], "optimizer.betas: [0.9, 0.99, 0.999] has 3 value(s)"),
        (["finetune=lora", "finetune.target_modules=[]"], "finetune.target_modules: [] has 0 value(s)"),
        (
            ["finetune=lora", "finetune.target_modules=[q_proj,vision_qproj]"],
            "finetune.target_modules: ['vision_qproj'] not among q_proj, k_proj",
        ),
    ],
)
def test_list_values_of_the_wrong_length_or_choice_are_refused_before_any_work(
    overrides, message, hydra_cleared
):
    assert message in _problems(compose_config(overrides))


@pytest.mark.parametrize("key", ["optimizer.lr", "cache_dir", "trainer.compile"])
def test_an_unset_environment_variable_is_named_with_its_fix(key, monkeypatch, hydra_cleared):
    """${oc.env:X} with X unset: one problem at the key that reads it, not OmegaConf's traceback (a
    ranged key) nor a problem at each consumer with an unrelated fix (cache_dir)."""
    monkeypatch.delenv("LIBRA_TEST_UNSET", raising=False)
    msg = _problems(compose_config([f"{key}=${{oc.env:LIBRA_TEST_UNSET}}"]))
    assert "1 problem(s)" in msg
    assert f"{key}: does not resolve (" in msg and "Environment variable 'LIBRA_TEST_UNSET' not found" in msg
    assert "fix: export LIBRA_TEST_UNSET=<value>  (or give it a default where it is read" in msg


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["sweep=lr_optuna", "benchmark=synthetic_caption"],
            "objective: 'benchmark/synthetic_vqa/accuracy' names the benchmark task 'synthetic_vqa', which "
            "this run does not run (benchmark tasks: synthetic_caption)",
        ),
        (
            ["objective=benchmark/vqav2/accuracy"],
            "objective: 'benchmark/vqav2/accuracy' names the benchmark task 'vqav2', which this run does not "
            "run (benchmark tasks: synthetic_caption, synthetic_vqa)",
        ),
        (
            ["sweep=lr_optuna", "trainer.benchmark_at_end=false"],
            "is read from the final benchmark's metrics.json, and this run has no final benchmark",
        ),
    ],
    ids=["task_not_benchmarked", "task_not_in_the_default_benchmark", "no_final_benchmark"],
)
def test_an_objective_no_benchmark_of_the_run_writes_is_refused(overrides, message, hydra_cleared):
    """The objective is read from the final benchmark's metrics.json after each trial: one the run cannot
    write is refused before the first trial trains (a metric name is only known afterwards)."""
    assert message in _problems(compose_config(overrides))
    validate(compose_config(["sweep=lr_optuna"]))
    validate(compose_config(["objective=benchmark/synthetic_vqa/accuracy"]))


@pytest.mark.parametrize(
    "model, said",
    [
        (
            {"hidden_size": 33, "num_attention_heads": 4},
            "model: hidden_size 33 is not divisible by num_attention_heads 4",
        ),
        (
            {"hidden_size": 36, "num_attention_heads": 12},
            "model: the head dim (hidden_size / num_attention_heads)",
        ),
    ],
)
def test_model_values_the_model_config_refuses_are_refused_before_launch(model, said):
    """A sweep over model.hidden_size=32,33 trained its first job, then failed building the second."""
    msg = _problems(_cfg(**{f"model__{k}": v for k, v in model.items()}))
    assert said in msg and "fix: change model.hidden_size model.num_attention_heads" in msg
    validate(_cfg(model__hidden_size=64))
