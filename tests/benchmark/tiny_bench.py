"""A tiny checkpoint and a benchmark config on the synthetic set, shared by the runner tests (and
importable by their spawned worker processes)."""

from pathlib import Path

import torch
from omegaconf import OmegaConf

from libra.config_schema import load_option

CONF = Path(__file__).resolve().parents[2] / "conf"
SYNTHETIC = {"seed": 0, "image_size": 56, "train_images": 40, "val_images": 4, "test_images": 6}


def build_tiny_checkpoint(cache: Path, folder: Path) -> Path:
    """An untrained one-layer Libra with the tiny synthetic processor, saved as an export folder."""
    from libra.train.models import tiny_libra
    from libra.train.tiny import tiny_synthetic_processor

    processor = tiny_synthetic_processor(str(cache), SYNTHETIC, vocab_size=300)
    torch.manual_seed(0)
    model = tiny_libra(
        processor, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
    )
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    return folder


def make_cfg(
    checkpoint: Path,
    cache: Path,
    run_dir: Path,
    logger: str = "wandb",
    vqa_items: int = 10,
    caption_items: int = 6,
    batch_size: int = 4,
):
    """task=benchmark on the synthetic VQA and caption tasks, a few items each."""
    tasks = OmegaConf.merge(
        OmegaConf.load(CONF / "benchmark" / "synthetic_vqa.yaml"),
        OmegaConf.load(CONF / "benchmark" / "synthetic_caption.yaml"),
    )
    tasks.synthetic_vqa.max_items = vqa_items
    tasks.synthetic_caption.max_items = caption_items
    tasks.synthetic_vqa.batch_size = tasks.synthetic_caption.batch_size = batch_size
    tasks.synthetic_caption.decoding.max_new_tokens = 6
    cfg = OmegaConf.create(
        {
            "checkpoint": str(checkpoint),
            "run_dir": str(run_dir),
            "task": "benchmark",
            "group": "test",
            "name": "test",
            "cache_dir": str(cache),
            "synthetic": SYNTHETIC,
            "logger": load_option(CONF / "logger" / f"{logger}.yaml"),
            "benchmark": tasks,
        }
    )
    if logger == "wandb":
        cfg.logger.backend.mode = "offline"
        for key in ("overrides", "sweep_dir", "sweep_params"):  # Hydra's record of a job: no Hydra here
            del cfg.logger.backend[key]
    return cfg
