"""Find and load a Libra model from any kind of checkpoint: the one loader of the toolkit.

Training (`model.init_from`), `task=benchmark`, `task=chat`, `task=generate`, the server and the Python
API all name a checkpoint the same way, and every one of them goes through `resolve_pretrained`:

===================  ==============================================  =====================================
kind                 recognised by                                   weights / config + processor from
===================  ==============================================  =====================================
``pretrained``       ``config.json`` + safetensors (an export, or    the folder itself
                     the official release with ``vqgan.ckpt``)
``run_dir``          ``export/``, ``export_step_*/`` or              ``export/`` when the run finished; else
                     ``checkpoints/step_*`` inside                   the newest of its exports and complete
                                                                     checkpoints
``deepspeed_step``   DeepSpeed model states inside                   the DeepSpeed files (ZeRO-3 shards are
                     (a ``checkpoints/step_*`` folder)               gathered); config + processor from the
                                                                     run's ``model_files/``
===================  ==============================================  =====================================

``model_files/`` (``config.json`` + the processor files) is written into the run dir once, when
training starts, so that every checkpoint of a run can be loaded on its own, before any export exists.
The exception: a `finetune=lora` checkpoint holds the adapters only (libra/train/lora.py), so it is
refused with the way to an export, and a run dir resolves to its exports alone.

The choice is returned with its reason and printed by `load_pretrained`, so a user always sees which
weights a command used. One dtype rule (`inference_dtype`): bf16 on a GPU, fp32 on the CPU, unless
the caller names a precision.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch and the model stay unimported until something is loaded
    import torch

    from libra.model import LibraForCausalLM
    from libra.tokenizer.processor import LibraProcessor

TRAINING_RECORD = "training.json"  # <export>/training.json: what trained the exported weights
MODEL_FILES = "model_files"  # <run dir>/model_files: config.json + processor files of the run
DEEPSPEED_STATES = "mp_rank_00_model_states.pt"  # ZeRO 0-2; ZeRO-3 writes zero_pp_rank_* shards
_STEP = re.compile(r"^(?:step|export_step)_(\d+)$")
PRECISIONS = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16"}


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """What a checkpoint path turned out to be."""

    kind: str  # "pretrained" | "deepspeed_step" (a run dir resolves to one of these)
    weights: Path  # the pretrained folder, or the DeepSpeed step folder
    files: Path  # the folder holding config.json and the processor files
    reason: str  # one line for the user: what was found and why it was picked

    def describe(self) -> str:
        return f"checkpoint: {self.reason}"


def resolve_pretrained(path: str | Path) -> ResolvedCheckpoint:
    """Decide what `path` is; raises FileNotFoundError naming what was looked for, or ValueError
    naming a damaged weight file of the model folder it found."""
    resolved = _resolve(Path(path).expanduser())
    if resolved.kind == "pretrained":
        check_weight_files(resolved.weights)
    return resolved


def _resolve(path: Path) -> ResolvedCheckpoint:
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if _is_pretrained_folder(path):
        layout = "the official release layout" if (path / "vqgan.ckpt").is_file() else "an export folder"
        return ResolvedCheckpoint("pretrained", path, path, f"{path} is {layout}")
    from libra.durable_files import MANIFEST, IncompleteFolder, read_manifest

    # a manifest without the model states: a step folder whose mp_rank_00_model_states.pt went missing,
    # which the manifest names (else it would be reported as no checkpoint at all)
    if _is_deepspeed_step(path) or (path / MANIFEST).is_file():
        try:
            manifest = read_manifest(path)  # written last by the save: without it it may be half written
        except IncompleteFolder as error:
            raise FileNotFoundError(f"checkpoint {path} is incomplete: {error}") from None
    if _is_deepspeed_step(path):
        if manifest.get("adapters_only", False):  # absent in checkpoints of older versions
            raise FileNotFoundError(
                f"checkpoint {path} holds LoRA adapters only (finetune=lora), not a model; load the run's "
                f"export ({path.parent.parent / 'export'}), or get one mid-run with "
                f"`touch {path.parent.parent / 'EXPORT_NOW'}` (or by resuming the run to its end)"
            )
        return ResolvedCheckpoint(
            "deepspeed_step",
            path,
            model_files_for(path),
            f"{path} is a DeepSpeed checkpoint of step {_step_of(path.resolve())}",
        )
    if path.name == "checkpoints" and path.is_dir():
        return _from_run_dir(path.parent, asked=path)
    return _from_run_dir(path, asked=path)


def _from_run_dir(run_dir: Path, asked: Path) -> ResolvedCheckpoint:
    final = run_dir / "export"
    if _is_pretrained_folder(final):
        return ResolvedCheckpoint(
            "pretrained", final, final, f"{asked} is a run dir; using its final export {final}"
        )
    candidates = []  # (step, preference, folder, kind); at equal steps an export beats a checkpoint
    for folder in run_dir.glob("export_step_*"):
        if _is_pretrained_folder(folder) and (step := _step_of(folder)) is not None:
            candidates.append((step, 1, folder, "pretrained"))
    adapter_checkpoints = 0  # finetune=lora checkpoints: no model without the base, not candidates
    complete, skipped = _scan_checkpoints(run_dir)
    for folder in complete:
        if _is_deepspeed_step(folder) and (step := _step_of(folder)) is not None:
            if _adapters_only(folder):
                adapter_checkpoints += 1
                continue
            candidates.append((step, 0, folder, "deepspeed_step"))
    if not candidates and adapter_checkpoints:
        raise FileNotFoundError(
            f"checkpoint {asked}: a finetune=lora run dir without an export; its {adapter_checkpoints} "
            f"checkpoint(s) hold LoRA adapters only. Get an export with `touch {run_dir / 'EXPORT_NOW'}` "
            "while it trains, or resume it (resume=auto) to its end"
        )
    if not candidates:
        raise FileNotFoundError(
            f"checkpoint {asked}: not a model folder (config.json + *.safetensors), not a DeepSpeed step "
            f"folder ({DEEPSPEED_STATES}) and not a run dir with export/, export_step_*/ or complete "
            f"checkpoints/step_*/{_passed_over(skipped)}; pass one of those"
        )
    step, _, folder, kind = max(candidates)
    files = folder if kind == "pretrained" else model_files_for(folder)
    what = "mid-run export" if kind == "pretrained" else "complete checkpoint"
    # a newer step that is not complete is named: the user may expect it to be the one loaded
    newer = [(path, why) for path, why in skipped if int(re.match(r"step_(\d+)", path.name)[1]) >= step]
    reason = (
        f"{asked} is a run dir without a final export; using its newest {what} {folder} (step {step})"
        f"{_passed_over(newer)}"
    )
    return ResolvedCheckpoint(kind, folder, files, reason)


def _passed_over(skipped: list[tuple[Path, str]]) -> str:
    return "".join(f"; passed over {path.name}: {why.removeprefix(f'{path}: ')}" for path, why in skipped)


def _is_pretrained_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def check_weight_files(folder: Path) -> None:
    """The safetensors files of a model folder are all there and their headers read (a cut-short or
    overwritten file fails here), checked before anything loads: the loaders' own errors name neither
    the file nor a missing shard's index. Reads the headers only."""
    import json

    from safetensors import SafetensorError, safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(
                f"{index} is not a readable safetensors index ({type(error).__name__}: {error}); "
                "re-download or re-export the folder"
            ) from None
        missing = sorted(shard for shard in shards if not (folder / shard).is_file())
        if missing:
            raise FileNotFoundError(
                f"{index} names {len(missing)} weight file(s) that are not in {folder}: "
                f"{', '.join(missing)}; the download or copy is incomplete: fetch the missing shards"
            )
    elif not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"{folder} has a config.json but no model weights (model.safetensors or "
            "model.safetensors.index.json + shards); pass the folder that holds them"
        )
    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(file, framework="pt"):
                pass
        except (OSError, SafetensorError) as error:
            raise ValueError(
                f"{file} is damaged ({error}): it was cut short or overwritten; re-download or re-export "
                "the folder"
            ) from None


def _is_deepspeed_step(folder: Path) -> bool:
    """DeepSpeed's model states: ``mp_rank_00_model_states.pt`` (ZeRO 0-2) or per-rank
    ``zero_pp_rank_*_mp_rank_00_model_states.pt`` shards (ZeRO-3)."""
    return (folder / DEEPSPEED_STATES).is_file() or any(folder.glob("zero_pp_rank_*_model_states.pt"))


def _adapters_only(step_dir: Path) -> bool:
    """A complete checkpoint of a finetune=lora run (libra/train/checkpoint.py notes it in the manifest)."""
    from libra.durable_files import read_manifest

    return read_manifest(step_dir).get("adapters_only", False)  # absent in older checkpoints


def _step_of(folder: Path) -> int | None:
    match = _STEP.match(folder.name)
    return int(match.group(1)) if match else None


def _scan_checkpoints(run_dir: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(complete checkpoints, [(folder, why it is not one)]) of a run dir."""
    from libra.train.checkpoint import scan_checkpoints

    return scan_checkpoints(run_dir)


def model_files_for(step_dir: Path) -> Path:
    """config.json + processor files for a DeepSpeed step folder: the step itself, the run's
    ``model_files/`` (written when training starts) or, for runs of older versions, its export."""
    # <run dir>/checkpoints/step_N, wherever a symlink to the step folder lies: the files of another
    # run next to the link must not be taken for its own
    run_dir = step_dir.resolve().parent.parent
    for candidate in (step_dir, run_dir / MODEL_FILES, run_dir / "export"):
        if (candidate / "config.json").is_file():
            return candidate
    raise FileNotFoundError(
        f"{step_dir}: DeepSpeed weights without a model config; expected {run_dir / MODEL_FILES}/config.json "
        "(written when training starts) or an export next to it"
    )


# ------------------------------------------------------------------------------------- loading


def inference_dtype(device: torch.device, precision: str | None = None) -> torch.dtype:
    """The one dtype rule: `precision` (fp32 | bf16) when given, else bf16 on a GPU and fp32 on the CPU
    (CPUs have no fast bf16 matmuls)."""
    import torch

    if precision is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    return getattr(torch, PRECISIONS[precision])


def read_training_record(path: str | Path | ResolvedCheckpoint) -> dict | None:
    """The training record an export carries (`TRAINING_RECORD`, written by libra/train/export.py);
    None for a folder without one (the official release, a DeepSpeed step, an older export)."""
    import json

    resolved = path if isinstance(path, ResolvedCheckpoint) else resolve_pretrained(path)
    file = resolved.weights / TRAINING_RECORD
    if resolved.kind != "pretrained" or not file.is_file():
        return None
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{file} is not a readable training record ({error}); delete it or re-export"
        ) from None


# what task=generate and the demo say of a checkpoint for which `trained_for_text_to_image` is False
NOT_TRAINED_TO_DRAW = (
    "was not trained for text-to-image: no training sample of it (or of the checkpoints it started "
    "from) asked for an image from a caption, so its images will not follow the prompt"
)


def trained_for_text_to_image(record: dict | None) -> bool | None:
    """Whether any text-to-image sample trained the weights a record describes, through the chain of
    `model.init_from` bases: True / False, or None when some base is not ours to know (no record)."""
    while record is not None:
        if record.get("text_to_image_samples", 0) > 0:
            return True
        if record.get("init_from") is None:  # trained from fresh weights (or from LLaMA): the chain ends
            return False
        record = record.get("base")
    return None


def default_device() -> torch.device:
    """The current GPU when there is one, else the CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def load_pretrained_model(
    path: str | Path | ResolvedCheckpoint, dtype: torch.dtype | None = None
) -> LibraForCausalLM:
    """The model of any checkpoint kind, on the CPU, in `dtype` (default: the checkpoint's own)."""
    from libra.model import LibraForCausalLM

    resolved = path if isinstance(path, ResolvedCheckpoint) else resolve_pretrained(path)
    if resolved.kind == "pretrained":
        return LibraForCausalLM.from_pretrained(resolved.weights, dtype=dtype)
    from libra.model import LibraConfig

    config = LibraConfig.from_pretrained(resolved.files)
    model = LibraForCausalLM(config)
    state = deepspeed_module_state(resolved.weights)
    wanted = model.state_dict()
    info = {  # what transformers' loading info says, so both kinds are refused with one message
        "missing_keys": wanted.keys() - state.keys(),
        "unexpected_keys": state.keys() - wanted.keys(),
        "mismatched_keys": [
            (key, state[key].shape, wanted[key].shape)
            for key in wanted.keys() & state.keys()
            if state[key].shape != wanted[key].shape
        ],
    }
    check_loaded_weights(resolved.weights, config, info, config_file=resolved.files / "config.json")
    model.load_state_dict(state, strict=True)
    return model.to(dtype) if dtype is not None else model


def check_loaded_weights(
    folder: Path, config, info: dict, ignore_mismatched_sizes: bool = False, config_file: Path | None = None
) -> None:
    """Raise unless a checkpoint's weights filled the model its config.json describes exactly.

    transformers leaves a parameter the files lack at its random init and drops a tensor the model has
    no place for, with a warning only: a damaged shard or weights of another config (more layers,
    another vocabulary) would give a model that runs and answers nonsense. `info` is the
    `output_loading_info` of `from_pretrained` (or the same keys for a DeepSpeed state dict);
    `config_file` is named when the config does not lie in `folder` (a DeepSpeed step's model_files/)."""
    found = {
        "missing (they would start at random)": sorted(info["missing_keys"]),
        "with no place in the model": sorted(info["unexpected_keys"]),
    }
    if not ignore_mismatched_sizes:
        found["of another shape"] = [
            f"{key} {tuple(saved)} vs {tuple(wanted)}"
            for key, saved, wanted in sorted(info["mismatched_keys"])
        ]
    problems = [
        f"{len(keys)} weight(s) {what}: {', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''}"
        for what, keys in found.items()
        if keys
    ]
    if problems:
        raise ValueError(
            f"checkpoint {folder}: its weight files do not match {config_file or 'its config.json'} "
            f"(num_hidden_layers="
            f"{config.num_hidden_layers}, hidden_size={config.hidden_size}, vocab_size={config.vocab_size}); "
            + "; ".join(problems)
            + ". The weight files are damaged or were saved with another config: re-export or re-download "
            "the folder, or put back the config.json that came with its weights"
        )


def load_pretrained_processor(path: str | Path | ResolvedCheckpoint, **settings) -> LibraProcessor:
    """The processor of any checkpoint kind; `settings` override the saved text settings."""
    from libra.tokenizer.processor import LibraProcessor

    resolved = path if isinstance(path, ResolvedCheckpoint) else resolve_pretrained(path)
    return LibraProcessor.from_pretrained(resolved.files, **settings)


def load_pretrained(
    path: str | Path | ResolvedCheckpoint,
    device: torch.device | str | None = None,
    precision: str | None = None,
) -> tuple[LibraForCausalLM, LibraProcessor]:
    """(model in eval mode, processor) on `device`, for inference; prints which checkpoint it used.

    The vision tokenizer stays fp32 whatever the model's dtype, so image codes do not depend on it.
    """
    import torch

    resolved = path if isinstance(path, ResolvedCheckpoint) else resolve_pretrained(path)
    print(f"[libra] {resolved.describe()}", flush=True)
    device = torch.device(device) if device is not None else default_device()
    model = load_pretrained_model(resolved, dtype=inference_dtype(device, precision))
    processor = load_pretrained_processor(resolved)
    return model.to(device).eval(), processor.to(device)


def deepspeed_module_state(step_dir: Path) -> dict[str, torch.Tensor]:
    """Model weights of a DeepSpeed step folder: `module` of the model-states file (ZeRO 0-2), or the
    ZeRO-3 parameter shards gathered into one state dict. Nothing is unpickled with code execution."""
    from libra.safe_load import safe_torch_load, safe_unpickling
    from libra.train.checkpoint import deepspeed_safe_globals

    allow = deepspeed_safe_globals()
    states = step_dir / DEEPSPEED_STATES
    if states.is_file():
        module = safe_torch_load(states, allow=allow).get("module")
        if module and all(t.numel() > 0 for t in module.values()):
            return module
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with safe_unpickling(allow):  # zero_to_fp32 calls torch.load itself
        return get_fp32_state_dict_from_zero_checkpoint(str(step_dir.parent), tag=step_dir.name)


def save_model_files(config, processor: LibraProcessor, run_dir: str | Path, replace: bool = False) -> Path:
    """Write ``<run dir>/model_files`` (config.json + processor files); rank 0 calls it when training
    starts. A complete folder is left as it is unless ``replace`` (no checkpoint relies on it)."""
    import shutil

    folder = Path(run_dir) / MODEL_FILES
    if (folder / "config.json").is_file() and not replace:
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    processor.save_pretrained(tmp)
    config.save_pretrained(tmp)  # config.json last: its presence marks the folder complete
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder
