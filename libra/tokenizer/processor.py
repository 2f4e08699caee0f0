"""``LibraProcessor``: text + images ↔ Libra model inputs (docs/design.md §5.2, §5.4, §6.4, §6.6).

Two halves, so the expensive part runs where it belongs:

* CPU, in DataLoader workers: ``processor.collator(samples)`` → :class:`TextBatch` (text ids with
  image slots, attention mask, vision indices, label mask, uint8 pixels or cached tokens).
* device, inside the step: ``processor.to_model_inputs(batch)`` normalises the pixels and runs the
  frozen vision tokenizer, both batched, and returns the model inputs dict ``input_ids (K,B,N)``,
  ``attention_mask (B,N)``, ``vision_indices (B,N)``, ``contiguous_signal (B,N,F) | None`` and, for
  training batches, ``labels (K,B,N)`` with -100.

``processor(samples)`` does both (eval, chat). ``decode`` turns generated ids back into text and
image-code spans; ``images_to_pil`` renders spans through the pixel decoder.

The transformers-style face of the same code, for users of the Python API::

    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=prompt, images=image, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=64)
    processor.batch_decode(out, skip_special_tokens=True)       # list[str]
    processor.batch_decode_images(out)                          # list[list[PIL.Image]]

``apply_chat_template`` renders messages through the same template and image layout as a
``ConversationSample``; ``processor(text=..., images=...)`` wraps each prompt in a ``PromptSample``
and runs the sample path, so both give the same ids for the same conversation.

Checkpoint folder (the official layout; the model writes its own ``config.json`` + weights beside):
text tokenizer files, ``vision_tokenizer_config.yaml`` + weights, and the CLIP folder; ours also holds
``libra_processor.json`` (template, max_length, eos, caption masking), which official folders lack.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature

from .captions import CaptionCleaner
from .collator import IMAGE_TAG, LibraCollator, Sample, TextBatch
from .image_processing import ImagePreprocessor
from .image_vocab import ImageVocab
from .samples import CaptionSample, ConversationSample, PromptSample, Turn
from .text_tokenizer import IMAGE_PLACEHOLDER, load_text_tokenizer, save_text_tokenizer
from .token_cache import TokenCache, cache_namespace
from .vision_tokenizer import CONFIG_NAME, VisionTokenizer

# Text-side settings of the processor (template, max_length, ...); absent from official folders.
PROCESSOR_SETTINGS_FILE = "libra_processor.json"
# Loading options transformers passes on (AutoProcessor.from_pretrained); a local folder needs none.
_HUB_OPTIONS = ("_from_auto", "trust_remote_code", "revision", "cache_dir", "local_files_only", "token")


@dataclass
class DecodedSample:
    """One generated sequence: text with one ``<img_ph>`` per image, and each image's indices."""

    text: str
    images: list[torch.Tensor] = field(default_factory=list)  # each (g*g, K) LFQ indices
    incomplete_image: bool = False  # a boi whose span was cut off (e.g. by max_new_tokens)


TEXT_SETTINGS = ("template", "max_length", "add_eos", "caption_mask")


def read_text_settings(file: Path) -> dict[str, Any]:
    """The text settings an export saved (``{}`` without the file), refused with the file's name when
    it does not parse or holds keys this version does not know (a bare JSON or keyword error would
    name neither)."""
    if not file.is_file():
        return {}
    fix = "re-export the folder, or write the settings the run used"
    try:
        saved = json.loads(file.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{file} is unreadable ({type(error).__name__}: {error}); {fix}") from None
    if not isinstance(saved, dict):
        raise ValueError(
            f"{file} must hold a JSON object of text settings, not a {type(saved).__name__}; {fix}"
        )
    unknown = sorted(set(saved) - set(TEXT_SETTINGS))
    if unknown:
        raise ValueError(f"{file}: unknown text setting(s) {unknown}; known: {list(TEXT_SETTINGS)}; {fix}")
    return saved


class LibraProcessor:
    """Text tokenizer + vision tokenizer + preprocessing + templates, in one object.

    Args:
        text_tokenizer: from :func:`load_text_tokenizer` (``<img_ph>``/``<img_gen>`` added).
        vision_tokenizer: the frozen :class:`VisionTokenizer`; move it with ``processor.to(device)``.
        preprocessor: image settings; default = the CLIP folder's, padded to square (official path).
        template: conversation template name for ``ConversationSample``/``VQASample`` (v1, llama_2, plain).
        caption_cleaner: applied to ``CaptionSample.caption`` (official pretraining rules by default).
        max_length: truncate training samples to this many positions (never inside an image).
        add_eos: append ``</s>`` to training samples (the official recipe does not).
        caption_mask: which caption-prompt tokens are not targets (official ``label_mask_strategy``):
            "instruction" (default, official pretraining: only the instruction/newline between image
            and caption), "prompt" (everything before the response, images included), "none".
        token_cache: folder (or :class:`TokenCache`) for per-image codes + CLIP features.
    """

    def __init__(
        self,
        text_tokenizer,
        vision_tokenizer: VisionTokenizer,
        preprocessor: ImagePreprocessor | None = None,
        template: str = "v1",
        caption_cleaner: CaptionCleaner | None = None,
        max_length: int | None = None,
        add_eos: bool = False,
        caption_mask: str = "instruction",
        token_cache: TokenCache | str | Path | None = None,
    ) -> None:
        self.text_tokenizer = text_tokenizer
        self.vision_tokenizer = vision_tokenizer
        # What shapes the text side beyond the tokenizer files; saved next to them so an export
        # prompts and masks exactly as the run that wrote it (official folders lack it: defaults).
        self.text_settings = {
            "template": template,
            "max_length": max_length,
            "add_eos": add_eos,
            "caption_mask": caption_mask,
        }
        cfg = vision_tokenizer.config
        self.vocab = ImageVocab(
            text_vocab_size=text_tokenizer.libra_base_vocab_size,
            codebook_size=cfg.codebook_size,
            num_codebook=cfg.num_codebook,
            grid=cfg.grid,
        )
        self.preprocessor = preprocessor or ImagePreprocessor(size=cfg.resolution)
        if self.preprocessor.size != cfg.resolution:
            raise ValueError(
                f"preprocessor size {self.preprocessor.size} != vision tokenizer resolution {cfg.resolution}"
            )
        if token_cache is not None and not isinstance(token_cache, TokenCache):
            token_cache = TokenCache(token_cache)
        self.token_cache = token_cache
        namespace = ""
        if token_cache is not None:
            namespace = cache_namespace(
                vision_tokenizer.fingerprint(), self.preprocessor.settings(), vision_tokenizer.dtype
            )
        self.collator = LibraCollator(
            text_tokenizer,
            self.vocab,
            self.preprocessor,
            template=template,
            caption_cleaner=caption_cleaner,
            max_length=max_length,
            add_eos=add_eos,
            caption_mask=caption_mask,
            token_cache=token_cache,
            cache_namespace=namespace,
        )

    # ---- folders ------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, folder: str | Path, dtype: torch.dtype = torch.float32, pad_to_square: bool = True, **kwargs
    ) -> LibraProcessor:
        """Load from a checkpoint folder (official or ours). ``kwargs`` go to ``__init__``.

        Any checkpoint kind of ``libra.pretrained`` works: a folder without the processor files (a run
        dir, a DeepSpeed ``checkpoints/step_*`` folder) is resolved to the one that holds them.
        """
        for option in _HUB_OPTIONS:
            kwargs.pop(option, None)
        folder = Path(folder)
        if not (folder / CONFIG_NAME).is_file():
            # imported here: the resolver knows the layout of training runs, which tokenisation does not
            from libra.pretrained import resolve_pretrained

            folder = resolve_pretrained(folder).files
        text = load_text_tokenizer(folder)
        vision = VisionTokenizer.from_pretrained(folder, dtype=dtype)
        clip_dir = folder / vision.config.encoder_name
        if (clip_dir / "preprocessor_config.json").is_file():
            preprocessor = ImagePreprocessor.from_clip_folder(clip_dir, pad_to_square=pad_to_square)
        else:
            preprocessor = ImagePreprocessor(size=vision.config.resolution, pad_to_square=pad_to_square)
        saved = read_text_settings(folder / PROCESSOR_SETTINGS_FILE)
        return cls(text, vision, preprocessor, **{**saved, **kwargs})

    def save_pretrained(self, folder: str | Path) -> None:
        """Write text tokenizer files, the vision tokenizer (yaml + safetensors) and the CLIP folder."""
        save_text_tokenizer(self.text_tokenizer, folder)
        self.vision_tokenizer.save_pretrained(folder, self.preprocessor)
        settings = json.dumps(self.text_settings, indent=2, sort_keys=True) + "\n"
        (Path(folder) / PROCESSOR_SETTINGS_FILE).write_text(settings)

    def to(self, device: torch.device | str) -> LibraProcessor:
        """Move the vision tokenizer (the only device part) and return self."""
        self.vision_tokenizer.to(device)
        return self

    @property
    def tokenizer(self):
        """The text tokenizer, under the name transformers processors give it."""
        return self.text_tokenizer

    # ---- chat messages → prompt string ----------------------------------------------------------
    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = False) -> str:
        """transformers-style chat messages → the prompt string, one ``<image>`` tag per image.

        ``messages``: ``{"role": "user" | "assistant", "content": str | [parts]}`` with parts
        ``{"type": "text", "text": ...}`` and ``{"type": "image"}`` (the image itself goes to
        ``processor(images=...)``). Roles alternate from a user turn. As in LLaVA, a turn's images go
        first, then a newline, then its text. The template's system prompt is fixed, so system
        messages are refused. ``add_generation_prompt`` ends the string with the assistant's role
        (``... ASSISTANT:``), the prompt the model answers.
        """
        turns, num_images = [], 0
        for i, message in enumerate(messages):
            role, content = message.get("role"), message.get("content")
            if role == "system":
                raise ValueError(
                    f"messages[{i}]: system messages are not supported; the {self.collator.template.name!r} "
                    "template has its own fixed system prompt"
                )
            if role not in ("user", "assistant"):
                raise ValueError(f"messages[{i}]: role must be 'user' or 'assistant', got {role!r}")
            text, images = _message_text(content, where=f"messages[{i}]")
            turns.append(Turn(role, IMAGE_TAG * images + ("\n" if images else "") + text))
            num_images += images
        if not turns:
            raise ValueError("messages is empty; give at least one user message")
        if turns[-1].role == "user" and not add_generation_prompt:
            raise ValueError(
                "the conversation ends with a user message: pass add_generation_prompt=True to get the "
                "prompt the model answers"
            )
        sample = ConversationSample(turns, [None] * num_images, key="messages")
        rendered, _, _, _ = self.collator.render(sample, generation=add_generation_prompt)
        return rendered.replace(self.collator.image_block(1), IMAGE_TAG)

    def text_to_image_prompt(self, caption: str, instruction: str = "") -> str:
        """The prompt that makes the model draw ``caption``: laid out as the text-to-image training
        samples, ending with ``<img_gen>`` (the image's boi). Decode with ``max_new_tokens =
        processor.vocab.tokens_per_image - 1`` and read the image with :meth:`batch_decode_images`."""
        sample = CaptionSample(None, caption, key="text_to_image", task="t2i", instruction=instruction)
        return self.collator.render(sample, generation=True)[0]

    # ---- samples → model inputs -------------------------------------------------------------
    def __call__(
        self,
        samples: list[Sample] | None = None,
        generation: bool = False,
        padding_side: str | None = None,
        device: torch.device | str | None = None,
        *,
        text: str | Sequence[str] | None = None,
        images: Any = None,
        return_tensors: str | None = "pt",
        padding: bool | str = True,
    ) -> dict[str, torch.Tensor | None]:
        """Samples → model inputs in one call (CPU collate, then the vision tokenizer).

        transformers style: ``processor(text=prompt, images=image, return_tensors="pt")`` with prompts
        from ``apply_chat_template`` (one ``<image>`` per image). ``text`` is one prompt or a list;
        ``images`` one image, a flat list (handed out to the prompts in order of their tags) or one
        list per prompt; an image is a PIL image, a path or encoded bytes. Prompts are padded to the
        longest, on the left (for ``generate``) unless ``padding_side`` says otherwise. Returns a
        ``BatchFeature`` (``.to(device)`` works) of ``input_ids (K, B, N)``, ``attention_mask``,
        ``vision_indices`` and ``contiguous_signal``.
        """
        if text is None:
            if samples is None or images is not None:
                raise TypeError("processor(...) takes samples, or text=... (and images=...) as keywords")
            batch = self.collator(samples, generation=generation, padding_side=padding_side)
            return self.to_model_inputs(batch, device=device)
        if samples is not None:
            raise TypeError("pass either samples or text=/images=, not both")
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors={return_tensors!r}: the processor returns torch tensors ('pt')")
        if padding not in (True, "longest"):
            raise ValueError(f"padding={padding!r}: prompts are always padded to the longest (padding=True)")
        prompts = [text] if isinstance(text, str) else list(text)
        per_prompt = _images_per_prompt(prompts, images)
        prompt_samples = [
            PromptSample(prompt, images, key=f"text[{i}]")
            for i, (prompt, images) in enumerate(zip(prompts, per_prompt))
        ]
        return BatchFeature(self(prompt_samples, generation=True, padding_side=padding_side, device=device))

    @torch.no_grad()
    def encode_images(self, batch: TextBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """All images of ``batch`` → indices (n, g*g, K) and features (n, g*g, F) on the tokenizer device.

        Pixels are encoded in one batched call; cached tokens are taken as they are; fresh tokens are
        written to the token cache when one is configured.
        """
        vt = self.vision_tokenizer
        n = batch.num_images
        indices = torch.zeros(
            (n, self.vocab.num_patches, self.vocab.num_codebook), dtype=torch.long, device=vt.device
        )
        features = torch.zeros((n, self.vocab.num_patches, vt.feature_size), dtype=vt.dtype, device=vt.device)
        if batch.pixel_values is not None:
            pixels = batch.pixel_values
            if pixels.dtype == torch.uint8:  # workers ship uint8; normalised here, batched, on the device
                pixels = self.preprocessor.normalize(pixels.to(vt.device, non_blocking=True))
            tokens = vt.encode(pixels)
            slots = batch.pixel_slots.to(vt.device)
            indices[slots], features[slots] = tokens.indices, tokens.features
            if self.token_cache is not None:
                for row, slot in enumerate(batch.pixel_slots.tolist()):
                    key = batch.cache_keys[slot]
                    if key is not None:
                        self.token_cache.save(key, tokens.indices[row], tokens.features[row])
        if batch.cached_indices is not None:
            slots = batch.cached_slots.to(vt.device)
            indices[slots] = batch.cached_indices.to(vt.device)
            features[slots] = batch.cached_features.to(device=vt.device, dtype=vt.dtype)
        return indices, features

    def to_model_inputs(
        self, batch: TextBatch, device: torch.device | str | None = None
    ) -> dict[str, torch.Tensor | None]:
        """Merge image codes and CLIP features into ``batch`` → the model inputs dict.

        At image positions every codebook row k holds ``[boi, V + index_k(patch)..., eoi]``; the
        contiguous signal holds the patch's CLIP features (zero at boi/eoi, text, padding and for
        hidden images); it is None when the batch has no image. ``labels`` only for training batches.
        """
        device = torch.device(device) if device is not None else self.vision_tokenizer.device
        k = self.vocab.num_codebook
        input_ids = batch.text_ids.to(device).unsqueeze(0).repeat(k, 1, 1)  # (K, B, N)
        vision_indices = batch.vision_indices.to(device)
        slot = batch.image_slot.to(device)
        signal = None
        if batch.num_images:
            indices, features = self.encode_images(batch)
            indices, features = indices.to(device), features.to(device)
            at_image = slot >= 0
            img, pos = slot[at_image], vision_indices[at_image]  # (n_pos,)
            patch = (pos - 1).clamp(0, self.vocab.num_patches - 1)
            codes = indices[img, patch].T + self.vocab.text_vocab_size  # (K, n_pos)
            is_patch = (pos >= 1) & (pos <= self.vocab.num_patches)
            framed = torch.where(pos == 0, self.vocab.boi_id, self.vocab.eoi_id)
            input_ids[:, at_image] = torch.where(is_patch, codes, framed)
            visible = (~batch.hide_features.to(device))[img] & is_patch
            signal = torch.zeros((*slot.shape, features.shape[-1]), dtype=features.dtype, device=device)
            signal[at_image] = features[img, patch] * visible.unsqueeze(-1).to(features.dtype)
        out = {
            "input_ids": input_ids,
            "attention_mask": batch.attention_mask.to(device),
            "vision_indices": vision_indices,
            "contiguous_signal": signal,
        }
        if batch.label_mask is not None:
            out["labels"] = torch.where(
                batch.label_mask.to(device), input_ids, torch.full_like(input_ids, -100)
            )
        return out

    # ---- model outputs → text and images ----------------------------------------------------
    def decode(self, ids: torch.Tensor) -> DecodedSample:
        """One sequence (K, T) of model ids → text (``<img_ph>`` per image) and image indices.

        Image spans are found by structure in row 0: boi, g*g code ids, eoi. Padding/unk, bos and eos
        are dropped from the text, and so are image ids outside a complete span (decode from a boi on,
        e.g. the whole sequence, to get an image whose boi was in the prompt). A boi whose span is
        cut off sets ``incomplete_image`` and ends the decoding there.
        """
        return self._decode(ids, image_placeholders=True)

    def _decode(self, ids: torch.Tensor, image_placeholders: bool) -> DecodedSample:
        if ids.dim() != 2 or ids.shape[0] != self.vocab.num_codebook:
            raise ValueError(
                f"decode expects one sequence (K={self.vocab.num_codebook}, T); got {tuple(ids.shape)}"
            )
        ids = ids.cpu()
        row = ids[0].tolist()
        placeholder = self.collator.placeholder_id
        text_ids, images, incomplete, i = [], [], False, 0
        span = self.vocab.tokens_per_image
        while i < len(row):
            if row[i] == self.vocab.boi_id:
                block = ids[:, i : i + span]
                if block.shape[1] == span and block[0, -1] == self.vocab.eoi_id:
                    images.append(self.vocab.ids_to_indices(block.unsqueeze(1))[0])  # (g*g, K)
                    if image_placeholders:
                        text_ids.append(placeholder)
                    i += span
                    continue
                incomplete = True
                break
            if row[i] < self.vocab.text_vocab_size:
                text_ids.append(row[i])
            i += 1
        text = self.text_tokenizer.decode(text_ids, skip_special_tokens=True)
        return DecodedSample(text=text, images=images, incomplete_image=incomplete)

    def batch_decode(self, sequences: torch.Tensor, skip_special_tokens: bool = False) -> list[str]:
        """(K, B, T) ids (``model.generate``'s output, or a slice of it) → one string per row.

        As in transformers, the prompt is part of the text unless sliced off
        (``out[:, :, inputs["input_ids"].shape[-1]:]``). Each image span reads ``<img_ph>``, or
        nothing with ``skip_special_tokens=True``; bos, eos and padding are always dropped. The
        images themselves come from :meth:`batch_decode_images`.
        """
        return [
            self._decode(sequences[:, b], image_placeholders=not skip_special_tokens).text
            for b in range(sequences.shape[1])
        ]

    def batch_decode_images(self, sequences: torch.Tensor, prompt_length: int = 0) -> list[list[Image.Image]]:
        """The images each row of (K, B, T) ids holds, as PIL images, one list per row.

        Pass ``prompt_length`` (``inputs["input_ids"].shape[-1]``) to keep only the images the model
        drew: those whose span ends after the prompt (a text-to-image prompt ends with the image's boi).
        """
        rows = []
        for b in range(sequences.shape[1]):
            row = sequences[:, b]
            begin = prompt_length
            if prompt_length and row[0, prompt_length - 1] == self.vocab.boi_id:
                begin -= 1  # the prompt opened the image the model drew
            indices = self.decode(row[:, begin:]).images
            rows.append(self.images_to_pil(indices) if indices else [])
        return rows

    @torch.no_grad()
    def decode_images(self, indices: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """Image indices ((g*g, K) each, or stacked (n, g*g, K)) → pixels (n, 3, R, R) ≈ [-1, 1]."""
        stacked = torch.stack(list(indices)) if isinstance(indices, list) else indices
        return self.vision_tokenizer.decode_indices(stacked)

    def images_to_pil(self, indices: list[torch.Tensor] | torch.Tensor) -> list[Image.Image]:
        """Image indices → PIL images (clamped to [-1, 1], mapped to 0..255 as the official demo)."""
        pixels = self.decode_images(indices).float().clamp(-1, 1)
        arrays = ((pixels + 1) / 2 * 255).permute(0, 2, 3, 1).cpu().numpy().astype(np.uint8)
        return [Image.fromarray(a) for a in arrays]

    @property
    def image_placeholder(self) -> str:
        return IMAGE_PLACEHOLDER


def _message_text(content: Any, where: str) -> tuple[str, int]:
    """A message's content (a string or a list of text/image parts) → (its text, number of images)."""
    if isinstance(content, str):
        return content, 0
    if not isinstance(content, list):
        raise ValueError(
            f"{where}: content must be a string or a list of parts, got {type(content).__name__}"
        )
    texts, images = [], 0
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "image":
            images += 1
        elif kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        else:
            raise ValueError(
                f'{where}.content[{j}]: expected {{"type": "text", "text": ...}} or {{"type": "image"}}, '
                f"got {part!r}"
            )
    return "\n".join(texts), images


def _images_per_prompt(prompts: list[str], images: Any) -> list[list]:
    """``images`` of ``processor(text=..., images=...)`` → one list per prompt, checked against the tags."""
    tags = [p.count(IMAGE_TAG) for p in prompts]
    if images is None:
        flat = []
    elif isinstance(images, (list, tuple)) and images and all(isinstance(i, (list, tuple)) for i in images):
        if len(images) != len(prompts):
            raise ValueError(
                f"{len(images)} image lists for {len(prompts)} prompts; give one list per prompt"
            )
        nested = [list(i) for i in images]
        for n, (count, group) in enumerate(zip(tags, nested)):
            if count != len(group):
                raise ValueError(f"prompt {n} has {count} {IMAGE_TAG} tag(s) but {len(group)} image(s)")
        return nested
    else:
        flat = list(images) if isinstance(images, (list, tuple)) else [images]
    if sum(tags) != len(flat):
        raise ValueError(
            f"the prompts hold {sum(tags)} {IMAGE_TAG} tag(s) but {len(flat)} image(s) were given; "
            f"build prompts with apply_chat_template and give one image per {{'type': 'image'}} part"
        )
    out, i = [], 0
    for count in tags:
        out.append(flat[i : i + count])
        i += count
    return out
