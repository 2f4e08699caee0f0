"""Export a training run to the one checkpoint folder layout that `from_pretrained` loads.

The official stage 1 saved its *training wrapper* (keys prefixed `module.` / `tokenizer.`, a config
without the model overrides, no tokenizer files), so its output could not feed stage 2
(docs/design.md B4, B5). The export here is the release layout (docs/design.md §2.4), exactly what
`LibraForCausalLM.from_pretrained` and `LibraProcessor.from_pretrained` read: `config.json` +
safetensors with the official parameter names, the text tokenizer files, the vision tokenizer yaml +
weights and the CLIP folder. Under ZeRO-3 the sharded parameters are gathered onto rank 0 first. Like
checkpoints, the folder is written under a temporary name, fsynced, given a manifest (every file and its
size) and renamed into place; an existing export of the same name is set aside until the new one is in
(``libra.durable_files.replace_folder``). An export whose weights are not all finite is refused before
anything is written.

On demand while training: `touch <run dir>/EXPORT_NOW`; at the next step the recipe writes
`<run dir>/export_step_<step>/` and removes the request file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from libra import distributed
from libra.durable_files import TMP_SUFFIX, fsync_tree, replace_folder, write_manifest
from libra.pretrained import TRAINING_RECORD

from .guard import NonFiniteWeights, weights_finite
from .lora import FULL, Finetune

EXPORT_REQUEST = "EXPORT_NOW"


def export_requested(run_dir: str | Path) -> bool:
    """Rank 0 looks for the request file, every rank gets its answer (they must export together)."""
    request = Path(run_dir) / EXPORT_REQUEST
    flag = torch.tensor([1.0 if distributed.is_main() and request.exists() else 0.0])
    if distributed.world_size() > 1:
        flag = flag.to("cuda" if torch.cuda.is_available() else "cpu")
        dist.all_reduce(flag)
    if flag.item() > 0 and distributed.is_main():
        request.unlink(missing_ok=True)
    return flag.item() > 0


def gathered_state_dict(engine) -> dict[str, torch.Tensor] | None:
    """Full model weights on rank 0 (None elsewhere); every rank must call it (ZeRO-3 gathers)."""
    if engine.zero_optimization_stage() == 3:
        # Gathers each partitioned parameter in turn; needs stage3_gather_16bit_weights_on_model_save,
        # which our generated DeepSpeed JSON always sets.
        state = engine._zero3_consolidated_16bit_state_dict()
        return state if distributed.is_main() else None
    if not distributed.is_main():
        return None
    return {k: v.detach().cpu() for k, v in engine.module.state_dict().items()}


def export_pretrained(
    engine, processor, out_dir: str | Path, finetune: Finetune = FULL, record: dict | None = None
) -> Path:
    """Write model + processor to `out_dir` (all ranks call; rank 0 writes). Returns the folder.

    `record` (the recipe's `training_record`) goes to `training.json` beside the weights: the tasks that
    load the export read what trained it from there (libra/pretrained.py `read_training_record`).
    A LoRA run (`finetune=lora`) writes its adapters merged into the base: the same layout and names
    as a full finetune's export (libra/train/lora.py)."""
    out_dir = Path(out_dir)
    if not weights_finite(engine):
        raise NonFiniteWeights(f"refusing to write the export {out_dir}: some weights are not finite")
    tmp = out_dir.with_name(out_dir.name + TMP_SUFFIX)
    state = gathered_state_dict(engine)
    if distributed.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        model, state = finetune.export_state(engine.module, state)
        # Only the names the model declares: buffers that are not persistent never reach the file.
        model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        processor.save_pretrained(tmp)
        if record is not None:
            (tmp / TRAINING_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        fsync_tree(tmp)
        write_manifest(tmp)
        replace_folder(tmp, out_dir)
    distributed.barrier()
    return out_dir
