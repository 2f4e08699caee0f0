"""CPU half of the processor: samples → text ids with image slots, masks, labels mask, pixels.

Runs in DataLoader workers; holds no vision model (only its fingerprint, for the token cache). Each
sample becomes one string in which every image is ``tokens_per_image`` space-separated ``<img_ph>``
placeholders (exactly what the official code tokenises, docs/design.md §5.2, §6.4, §6.6); the
placeholders' token positions become the image's slots. Spans not trained on come as character
ranges from the template and are mapped to tokens with the tokenizer's offsets
(docs/design.md §6.5), per sample before padding, so they hold for left padding too
(docs/design.md B17, B18). Bugs of the official code fixed here (docs/design.md B10, B11, B19): a
placeholder without an image or an image without placeholders is an error naming the sample;
``<img_gen>`` always gets vision index 0; truncation drops a whole image rather than cutting it.

The device half (running the vision tokenizer, merging codes and CLIP features) is
``LibraProcessor.to_model_inputs``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerFast

from .captions import CaptionCleaner
from .image_processing import ImagePreprocessor
from .image_vocab import ImageVocab
from .samples import CaptionSample, ConversationSample, PromptSample, TextSample, Turn, VQASample
from .templates import get_template
from .text_tokenizer import IMAGE_GENERATION, IMAGE_PLACEHOLDER
from .token_cache import TokenCache, image_cache_key

log = logging.getLogger(__name__)

IMAGE_TAG = "<image>"  # LLaVA's tag in user turns
Sample = CaptionSample | ConversationSample | PromptSample | TextSample | VQASample


class SampleError(ValueError):
    """A sample that cannot be turned into model inputs; the message names it and the fix."""


@dataclass
class TextBatch:
    """The CPU half of a batch: everything but the image codes and CLIP features.

    Shapes: B samples, N positions, n images in batch order (sample by sample, left to right).
    ``text_ids`` hold text ids; image positions hold the ``<img_ph>`` id until merged, and
    ``<img_gen>`` is already boi. ``image_slot`` says which image fills a position (-1 elsewhere).
    Images come either as ``pixel_values`` (to encode on the device; ``pixel_slots`` says which
    image each row is) or from the token cache (``cached_indices``/``cached_features``/``cached_slots``).
    """

    text_ids: torch.Tensor  # (B, N) int64
    attention_mask: torch.Tensor  # (B, N) int64
    vision_indices: torch.Tensor  # (B, N) int64
    image_slot: torch.Tensor  # (B, N) int64
    label_mask: torch.Tensor | None  # (B, N) bool: positions that are targets; None for prompts
    hide_features: torch.Tensor  # (n,) bool: zero this image's CLIP features (contiguous_ignore_sign)
    # (n_pix, 3, R, R): uint8 straight from the workers' resize/crop (``to_model_inputs`` normalises
    # it on the device), or float32 CLIP-normalised when some image came normalised already
    pixel_values: torch.Tensor | None
    pixel_slots: torch.Tensor  # (n_pix,) int64
    cached_indices: torch.Tensor | None = None  # (n_cached, g*g, K) int64
    cached_features: torch.Tensor | None = None  # (n_cached, g*g, F)
    cached_slots: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    cache_keys: list[str | None] = field(default_factory=list)  # per image, to store new tokens
    keys: list[str] = field(default_factory=list)  # per sample, for error messages
    truncated: int = 0  # samples cut to ``max_length`` (the reader collator counts them)

    @property
    def num_images(self) -> int:
        return int(self.hide_features.numel())

    def pin_memory(self) -> TextBatch:
        """Called by ``DataLoader(pin_memory=True)``: pin every tensor field for fast device copies."""
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(self, name, value.pin_memory())
        return self


@dataclass
class _Encoded:
    """One sample before padding."""

    ids: list[int]
    vision_indices: list[int]
    image_slot: list[int]  # sample-local image number or -1
    label_mask: list[bool]
    images: list  # PIL / tensors, in slot order
    hide: list[bool]
    truncated: bool = False  # cut to max_length


class LibraCollator:
    """Turns samples into a :class:`TextBatch` (picklable, light: safe to send to workers)."""

    def __init__(
        self,
        text_tokenizer: PreTrainedTokenizerFast,
        image_vocab: ImageVocab,
        preprocessor: ImagePreprocessor,
        template: str = "v1",
        caption_cleaner: CaptionCleaner | None = None,
        max_length: int | None = None,
        add_eos: bool = False,
        caption_mask: str = "instruction",
        token_cache: TokenCache | None = None,
        cache_namespace: str = "",
    ) -> None:
        if caption_mask not in ("instruction", "prompt", "none"):
            raise ValueError(f"caption_mask must be 'instruction', 'prompt' or 'none', got {caption_mask!r}")
        self.text_tokenizer = text_tokenizer
        self.backend = text_tokenizer.backend_tokenizer
        self.vocab = image_vocab
        self.preprocessor = preprocessor
        self.template = get_template(template)
        self.caption_cleaner = caption_cleaner or CaptionCleaner()
        self.max_length = max_length
        self.add_eos = add_eos
        self.caption_mask = caption_mask  # official label_mask_strategy of the caption datasets
        self.token_cache = token_cache
        self.cache_namespace = cache_namespace  # vision tokenizer fingerprint + dtype
        self.placeholder_id = text_tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
        self.generation_id = text_tokenizer.convert_tokens_to_ids(IMAGE_GENERATION)
        self.bos_id = text_tokenizer.bos_token_id
        self.eos_id = text_tokenizer.eos_token_id
        self.pad_id = text_tokenizer.pad_token_id
        self._warned_truncation = False

    # ---- strings ------------------------------------------------------------------------------
    def image_block(self, num_images: int) -> str:
        """The placeholder run of ``num_images`` images: single spaces, each placeholder swallows one."""
        return " ".join([IMAGE_PLACEHOLDER] * (self.vocab.tokens_per_image * num_images))

    def render(self, sample: Sample, generation: bool) -> tuple[str, list[tuple[int, int]], list, list[bool]]:
        """A sample → (text, masked character spans, images in order, hide-features flags)."""
        if isinstance(sample, CaptionSample):
            return self._render_caption(sample, generation)
        if isinstance(sample, ConversationSample):
            return self._render_conversation(sample, generation)
        if isinstance(sample, VQASample):
            if not generation:
                raise SampleError(
                    f"sample {sample.key!r}: VQASample is a prompt; train on a ConversationSample"
                )
            conv = ConversationSample(
                [Turn("user", f"{IMAGE_TAG}\n{sample.question}")], [sample.image], sample.key
            )
            return self._render_conversation(conv, generation)
        if isinstance(sample, PromptSample):
            return self._render_prompt(sample, generation)
        if isinstance(sample, TextSample):
            return sample.text, [], [], []
        raise SampleError(f"unsupported sample type {type(sample).__name__}; expected one of {Sample}")

    def _render_caption(self, sample: CaptionSample, generation: bool):
        """background + middle + respond, built as the official caption datasets do (docs/design.md §6.4)."""
        if sample.task not in ("i2t", "t2i"):
            raise SampleError(f"sample {sample.key!r}: task must be 'i2t' or 't2i', got {sample.task!r}")
        if sample.image is None and not (generation and sample.task == "t2i"):
            raise SampleError(f"sample {sample.key!r}: a {sample.task} caption sample needs its image")
        caption = self.caption_cleaner(sample.caption)
        instruction = sample.instruction.strip()
        if sample.task == "i2t":
            background = self.image_block(1)
            middle = f"\n{instruction}\n" if instruction else "\n"
            respond = "" if generation else caption
        else:
            background = caption
            # the space before the image is needed: a placeholder only matches as "▁<img_ph>"
            middle = f" {instruction}\n " if instruction else "\n "
            respond = IMAGE_GENERATION if generation else self.image_block(1)
        text = background + middle + respond
        images = [] if sample.image is None or generation and sample.task == "t2i" else [sample.image]
        hide = [sample.hide_image_features] * len(images)
        if generation:
            return text, [], images, hide
        prompt_end = len(background) + len(middle)
        masked = {"prompt": [(0, prompt_end)], "instruction": [(len(background), prompt_end)], "none": []}
        spans = list(masked[self.caption_mask])
        # "Mask the nearest text token after an image": the "\n" after an i2t image; after a t2i
        # image that is the appended eos (nothing when there is none).
        spans.append(
            (len(background), len(background) + 1) if sample.task == "i2t" else (len(text), len(text) + 1)
        )
        return text, spans, images, hide

    def _render_prompt(self, sample: PromptSample, generation: bool):
        """A prompt the template already laid out: each ``<image>`` tag becomes its placeholder run."""
        if not generation:
            raise SampleError(
                f"sample {sample.key!r}: PromptSample is a prompt; train on a ConversationSample"
            )
        tags = sample.text.count(IMAGE_TAG)
        if tags != len(sample.images):
            raise SampleError(
                f"sample {sample.key!r}: {tags} {IMAGE_TAG} tag(s) but {len(sample.images)} image(s); "
                f"give one image per {IMAGE_TAG} in the prompt"
            )
        text = sample.text.replace(IMAGE_TAG, self.image_block(1))
        return text, [], list(sample.images), [False] * len(sample.images)

    def _render_conversation(self, sample: ConversationSample, generation: bool):
        turns = list(sample.turns)
        if turns and turns[0].role != "user":
            turns = turns[1:]  # the official reader drops a leading non-user message
        if not turns:
            raise SampleError(f"sample {sample.key!r}: conversation has no user turn")
        for i, turn in enumerate(turns):
            expected = "user" if i % 2 == 0 else "assistant"
            if turn.role != expected:
                raise SampleError(
                    f"sample {sample.key!r}: turn {i} is {turn.role!r}, expected {expected!r}"
                    " (roles alternate, starting with the user)"
                )
        ends_with_user = turns[-1].role == "user"
        if not generation and ends_with_user:
            raise SampleError(
                f"sample {sample.key!r}: conversation ends with the user; a training conversation must end "
                "with an assistant answer (drop the last turn, or build a generation prompt)"
            )
        messages, n_tags = [], 0
        for turn in turns:
            tags = turn.text.count(IMAGE_TAG)
            if tags and turn.role != "user":
                raise SampleError(
                    f"sample {sample.key!r}: {IMAGE_TAG} in an assistant turn; images go in user turns"
                )
            text = turn.text
            if tags:
                text = self.image_block(tags) + "\n" + text.replace(IMAGE_TAG, "").strip()
            n_tags += tags
            messages.append((turn.role, text))
        if n_tags != len(sample.images):
            raise SampleError(
                f"sample {sample.key!r}: {n_tags} {IMAGE_TAG} tag(s) but {len(sample.images)} image(s); "
                f"put one {IMAGE_TAG} in a user turn per image"
            )
        if generation and ends_with_user:
            messages.append(("assistant", ""))
        text, masked = self.template.render(messages)
        return text, masked, list(sample.images), [False] * len(sample.images)

    # ---- tokens -------------------------------------------------------------------------------
    def encode(self, sample: Sample, generation: bool = False) -> _Encoded:
        key = getattr(sample, "key", "")
        text, masked, images, hide = self.render(sample, generation)
        enc = self.backend.encode(text)
        ids, offsets = list(enc.ids), enc.offsets
        if self.add_eos and not generation:
            ids.append(self.eos_id)
            offsets = list(offsets) + [(len(text), len(text) + 1)]  # eos "covers" the end of the text
        n = len(ids)
        vision = [self.vocab.text_vision_index] * n
        slot = [-1] * n
        placeholder_positions = [i for i, t in enumerate(ids) if t == self.placeholder_id]
        per_image = self.vocab.tokens_per_image
        if len(placeholder_positions) != per_image * len(images):
            raise SampleError(
                f"sample {key!r}: {len(placeholder_positions)} {IMAGE_PLACEHOLDER} tokens for {len(images)} "
                f"image(s) of {per_image} tokens each; do not write {IMAGE_PLACEHOLDER} in text, use "
                f"{IMAGE_TAG} tags / the sample's image fields"
            )
        for image in range(len(images)):
            run = placeholder_positions[image * per_image : (image + 1) * per_image]
            if run[-1] - run[0] != per_image - 1:
                raise SampleError(f"sample {key!r}: image {image}'s placeholders are not contiguous")
            for j, pos in enumerate(run):
                vision[pos], slot[pos] = j, image
        for i, t in enumerate(ids):
            if t == self.generation_id:
                ids[i], vision[i] = self.vocab.boi_id, 0  # boi of an image to generate (docs/design.md B10)
        label = [True] * n
        for start, end in masked:
            for i in range(_char_to_token(offsets, start), _char_to_token(offsets, end)):
                label[i] = False
        for i, t in enumerate(ids):
            if t == self.bos_id or t == self.vocab.boi_id or (slot[i] >= 0 and vision[i] == 0):
                label[i] = False  # official get_labels: bos and boi are never targets
        enc = _Encoded(ids, vision, slot, label, images, hide)
        # Prompts are never truncated: cutting their end would drop "ASSISTANT:" (the runner decides).
        return self._truncate(enc) if self.max_length and not generation else enc

    def _truncate(self, enc: _Encoded) -> _Encoded:
        cut = self.max_length
        if len(enc.ids) <= cut:
            return enc
        if not self._warned_truncation:  # once per process; the run counts them (data/truncated)
            log.warning(
                f"a sample of {len(enc.ids)} positions is cut to max_length={cut}; later ones are "
                "only counted (data/truncated)"
            )
            self._warned_truncation = True
        if enc.image_slot[cut - 1] >= 0 and enc.vision_indices[cut - 1] != self.vocab.tokens_per_image - 1:
            cut -= enc.vision_indices[cut - 1] + 1  # never cut an image; drop it whole (docs/design.md B19)
        kept = max([s for s in enc.image_slot[:cut] if s >= 0], default=-1) + 1
        return _Encoded(
            enc.ids[:cut],
            enc.vision_indices[:cut],
            enc.image_slot[:cut],
            enc.label_mask[:cut],
            enc.images[:kept],
            enc.hide[:kept],
            truncated=True,
        )

    # ---- batching -----------------------------------------------------------------------------
    def __call__(
        self, samples: list[Sample], generation: bool = False, padding_side: str | None = None
    ) -> TextBatch:
        """Samples → :class:`TextBatch`. Prompts (``generation=True``) get no labels and pad left."""
        if not samples:
            raise ValueError("empty batch")
        padding_side = padding_side or ("left" if generation else "right")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        encoded = [self.encode(s, generation) for s in samples]
        width = max(len(e.ids) for e in encoded)
        batch = len(encoded)
        text_ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((batch, width), dtype=torch.long)
        vision = torch.full((batch, width), self.vocab.text_vision_index, dtype=torch.long)
        slots = torch.full((batch, width), -1, dtype=torch.long)
        labels = torch.zeros((batch, width), dtype=torch.bool)
        images, hide, offset = [], [], 0
        for b, e in enumerate(encoded):
            n = len(e.ids)
            cols = slice(width - n, width) if padding_side == "left" else slice(0, n)
            text_ids[b, cols] = torch.tensor(e.ids)
            attention[b, cols] = 1
            vision[b, cols] = torch.tensor(e.vision_indices)
            local = torch.tensor(e.image_slot)
            slots[b, cols] = torch.where(local >= 0, local + offset, local)
            labels[b, cols] = torch.tensor(e.label_mask)
            keys = [getattr(samples[b], "key", "")] * len(e.images)
            images += list(zip(e.images, keys))
            hide += e.hide
            offset += len(e.images)
        out = TextBatch(
            text_ids=text_ids,
            attention_mask=attention,
            vision_indices=vision,
            image_slot=slots,
            label_mask=None if generation else labels,
            hide_features=torch.tensor(hide, dtype=torch.bool),
            pixel_values=None,
            pixel_slots=torch.zeros(0, dtype=torch.long),
            keys=[getattr(s, "key", "") for s in samples],
            truncated=sum(e.truncated for e in encoded),
        )
        self._attach_images(out, images)
        return out

    def _attach_images(self, batch: TextBatch, images: list) -> None:
        pixels, pixel_slots, cached, cached_slots, cache_keys = [], [], [], [], []
        for slot, (image, key) in enumerate(images):
            tensor = self.preprocessor.worker_pixels(image, key)
            cache_key = None
            if self.token_cache is not None:
                # keyed by the normalised float32 pixels, as it was before workers shipped uint8, so
                # caches written earlier stay valid and a float tensor input hits the same entry
                cache_key = image_cache_key(self._normalised(tensor), self.cache_namespace)
                hit = self.token_cache.load(cache_key)
                if hit is not None:
                    cached.append(hit)
                    cached_slots.append(slot)
                    cache_keys.append(cache_key)
                    continue
            cache_keys.append(cache_key)
            pixels.append(tensor)
            pixel_slots.append(slot)
        batch.cache_keys = cache_keys
        if pixels:
            if any(p.dtype != torch.uint8 for p in pixels):  # one dtype per batch: float wins
                pixels = [self._normalised(p) for p in pixels]
            batch.pixel_values = torch.stack(pixels)
            batch.pixel_slots = torch.tensor(pixel_slots, dtype=torch.long)
        if cached:
            batch.cached_indices = torch.stack([c.indices for c in cached])
            batch.cached_features = torch.stack([c.features for c in cached])
            batch.cached_slots = torch.tensor(cached_slots, dtype=torch.long)

    def _normalised(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.preprocessor.normalize(pixels) if pixels.dtype == torch.uint8 else pixels


def _char_to_token(offsets: list[tuple[int, int]], char: int) -> int:
    """Index of the token covering ``char``, else of the first token after it, else len(offsets).

    Never None (docs/design.md B17): a character no token covers (a swallowed space) maps to the next token.
    """
    for i, (start, end) in enumerate(offsets):
        if end > start and end > char:
            return i
    return len(offsets)
