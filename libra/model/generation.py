"""Generation for `LibraForCausalLM` (docs/design.md §4): an explicit decoding loop over 3-D (K, B, N) ids.

transformers' `generate` assumes 2-D ids (docs/design.md B12, B29), so this is a small loop of its own:
a KV cache, greedy / sampling (temperature, top-k, top-p) / beam search for text, left padding, eos stop.

The image structure comes from `vision_indices`, never from searching boi/eoi ids: after each step the
new token's index is `min(previous + 1, max_vision_token_length)`, so a boi (index 0) is followed by the
R*R code slots, the eoi slot (M - 1) and then text (M). After the eoi slot a newline is forced.

Decoding has two paths after the prompt's forward (the prefill): the dynamic one (default) runs each step
through the model's ordinary forward on a cache grown on demand; `cache_implementation="static"` runs
`LibraForCausalLM.decoding_step` on a cache of fixed length, with no device-to-host read inside the
step and the same shapes at every step, and `compile=True` compiles that step (torch.compile; CUDA
graphs on a GPU). Both give the same tokens. Which key/value sets the cache keeps follows from the
vision-index rule too: a row on a text slot stays text, so once every row is on a text slot no image
query can come and the set only image queries read is not kept (see `LibraCache`).

`strict_image_structure=False` reproduces the official behaviour (what the fixtures record): the
newline is forced with +inf/-inf logits and only on steps after the first, and the eoi slot holds
whatever the vision head predicts. `strict_image_structure=True` (default) additionally forces eoi in
the eoi slot, keeps boi/eoi out of code slots and forces with finite logits (0 at the forced id), also
on the first step (docs/design.md B7, B8, B9). In both modes a forced row takes its forced token
directly, text is sampled once and shared by every codebook, and the text after an image is kept whole
(docs/design.md B16, B15).
"""

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput

from .cache import LibraCache


@dataclass
class LibraGenerateOutput(ModelOutput):
    sequences: torch.Tensor | None = None  # (K, B, N + T)
    scores: tuple[torch.Tensor, ...] | None = None  # per step (K, B, vocab_size + vision_vocab_size)
    sequences_scores: torch.Tensor | None = None  # (B,) beam search: length-normalised log-probability
    cache: LibraCache | None = None  # the KV cache at the end (a static one is reused by the next call)


def filter_scores(scores: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None):
    """Temperature, top-k and top-p (nucleus) on the last dim of scores of any shape; removed = -inf."""
    if temperature != 1.0:
        # divided from the row's best score down: a tiny temperature (1e-40) sends the others to -inf
        # instead of every positive score to +inf, so it approaches greedy instead of a uniform draw
        # (a row forced to +inf by the official mode has no finite best and is divided as it is)
        top = scores.amax(-1, keepdim=True)
        scores = (scores - torch.where(torch.isfinite(top), top, 0.0)) / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(scores, min(top_k, scores.shape[-1]), dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=True)
        cum = sorted_scores.softmax(-1).cumsum(-1)
        # drop a token once the mass before it already reaches top_p; the best token always stays
        drop_sorted = (cum - sorted_scores.softmax(-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores


@torch.no_grad()
def generate(
    self,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    vision_indices: torch.Tensor | None = None,
    contiguous_signal: torch.Tensor | None = None,
    max_new_tokens: int = 20,
    do_sample: bool = False,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    strict_image_structure: bool = True,
    use_cache: bool = True,
    return_dict_in_generate: bool = False,
    output_scores: bool = False,
    generator: torch.Generator | None = None,
    streamer=None,
    cache_implementation: str | None = None,
    compile: bool = False,
    **unexpected,
):
    """Decode `max_new_tokens` tokens after a left-padded (K, B, N) prompt; returns (K, B, N + T) ids.

    With `return_dict_in_generate=True` a `LibraGenerateOutput`; `output_scores=True` adds the per-step
    (K, B, V + VV) scores used to pick each token (after forcing and sampling filters). Rows stop at
    `eos_token_id` (config.eos_token_id by default) and are then filled with `pad_token_id`.
    `streamer` (transformers' protocol, on 3-D ids): `streamer.put(tokens)` gets each step's (K, B)
    tokens as soon as they are chosen, and `streamer.end()` is called when decoding stops.
    `cache_implementation`: "dynamic" (default) or "static" (a fixed-length cache and the separate
    `decoding_step` path); `compile=True` compiles that step and implies "static".
    """
    if unexpected:
        raise TypeError(f"generate() got unsupported arguments {sorted(unexpected)}.")
    if streamer is not None and num_beams > 1:
        raise ValueError("generate: a streamer needs num_beams=1 (beam search picks its tokens at the end).")
    static = _wants_static_cache(cache_implementation, compile, use_cache, num_beams)
    cfg = self.config
    if vision_indices is None:
        raise ValueError(
            "generate: vision_indices (B, N) is required (use max_vision_token_length for text)."
        )
    K, B, N = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones(B, N, dtype=torch.long, device=input_ids.device)
    eos = cfg.eos_token_id if eos_token_id is None else eos_token_id
    pad = cfg.pad_token_id if pad_token_id is None else pad_token_id
    temperature = 1.0 if temperature is None else temperature
    if do_sample and temperature <= 0:
        raise ValueError(f"generate: temperature must be > 0 when do_sample=True, got {temperature}.")
    if num_beams > 1:
        if do_sample:
            raise ValueError("generate: num_beams > 1 is beam search; set do_sample=False.")
        return _beam_search(
            self, input_ids, attention_mask, vision_indices, contiguous_signal, max_new_tokens, num_beams,
            length_penalty, eos, pad, return_dict_in_generate,
        )  # fmt: skip

    M = cfg.max_vision_token_length
    V, VV = cfg.vocab_size, cfg.vision_vocab_size
    newline, eoi, boi = cfg.newline_token_id, cfg.eoi_token_id, cfg.boi_token_id
    ids, vis, mask = input_ids, vision_indices, attention_mask.long()
    # positions count real tokens, so left padding does not shift them; padded slots get 1 (as the reference)
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    signal = contiguous_signal
    # a row on a text slot stays text (the next index is min(index + 1, M)): from the prompt's last
    # indices the host knows how many rows hold an image token at every step, without reading the device
    last_index = vision_indices[:, -1].tolist()
    cache = None
    if use_cache:
        # image queries come at step s >= 1 only while min(last_index) + s < M
        image_queries = min(last_index) + 1 < M
        if static:
            cache = _static_cache(self, _static_length(N + max_new_tokens), image_queries)
        else:
            cache = LibraCache(cfg.num_hidden_layers, image_queries=image_queries)
            cache.capacity_hint = N + max_new_tokens
    step_fn = _decoding_step_fn(self, compile) if static else None
    finished = torch.zeros(B, dtype=torch.bool, device=ids.device)
    all_scores = []
    columns = torch.arange(V + VV, device=ids.device)
    # the score rows that forcing writes: one token allowed (0 / -inf; +inf / -inf in the official mode)
    only = {token: torch.where(columns == token, 0.0, float("-inf")) for token in (newline, eoi)}
    only_newline_official = torch.where(columns == newline, float("inf"), float("-inf"))
    frame_columns = (columns == boi) | (columns == eoi)  # boi and eoi: never inside the code grid

    for step in range(max_new_tokens):
        # rows whose last token sits on an image slot: the host knows it from the vision-index rule
        image_rows = sum(index + step < M for index in last_index)
        if cache is None or step == 0:
            if signal is not None and signal.shape[1] < ids.shape[-1]:
                # generated tokens carry no CLIP features (docs/design.md §4.2)
                signal = torch.cat(
                    [signal, signal.new_zeros(B, ids.shape[-1] - signal.shape[1], signal.shape[2])], 1
                )
            out = self(
                input_ids=ids, attention_mask=mask, vision_indices=vis, contiguous_signal=signal,
                position_ids=pos, past_key_values=cache, use_cache=cache is not None, last_logits_only=True,
            )  # fmt: skip
            logits = out.logits
        elif static:
            if compile and ids.device.type == "cuda":
                torch.compiler.cudagraph_mark_step_begin()  # the last step's outputs are consumed
            # fresh contiguous copies: the same strides at every step, so a compiled step is reused
            last = [t[..., -1:].clone(memory_format=torch.contiguous_format) for t in (ids, vis, pos)]
            logits = step_fn(*last, cache, image_rows)
            logits = logits.clone() if compile else logits  # CUDA graphs reuse their output memory
            cache.advance(1)
        else:
            out = self(
                input_ids=ids[:, :, -1:], attention_mask=mask, vision_indices=vis[:, -1:],
                position_ids=pos[:, -1:], past_key_values=cache, use_cache=True, last_logits_only=True,
            )  # fmt: skip
            logits = out.logits
        if cache is not None and cache.image_queries and min(last_index) + step + 1 >= M:
            cache.stop_image_queries()  # every later query is text
        scores = logits[:, :, -1].float()  # (K, B, V + VV)
        vis_last = vis[:, -1]
        vis_next = (vis_last + 1).clamp(max=M)

        # forcing: newline after the eoi slot; in strict mode also eoi into the eoi slot. Once every row
        # is on a text slot, nothing is forced
        force_newline = (vis_last == M - 1) if image_rows else None
        if force_newline is not None and not strict_image_structure:
            force_newline = force_newline & (step > 0)
            if step == 0 and bool((vis_last == M - 1).any()):
                raise ValueError(
                    "generate: a prompt ends in the eoi slot, which the official decoding cannot continue "
                    "(docs/design.md B9); pass strict_image_structure=True."
                )
            scores = torch.where(force_newline[None, :, None], only_newline_official, scores)
        elif force_newline is not None:
            force_eoi = vis_next == M - 1
            in_code_slot = (vis_next >= 1) & (vis_next < M - 1)
            scores = scores.masked_fill(in_code_slot[None, :, None] & frame_columns, float("-inf"))
            for forced_rows, token in ((force_newline, newline), (force_eoi, eoi)):
                scores = torch.where(forced_rows[None, :, None], only[token], scores)

        if do_sample:
            scores = filter_scores(scores, temperature, top_k, top_p)
            # a forced row of the official mode is +inf/-inf; its token is set below, keep softmax finite
            probs = torch.where(torch.isinf(scores) & (scores > 0), 0.0, scores).softmax(-1)
            probs = torch.nan_to_num(probs, nan=0.0)
            probs[..., 0] += probs.sum(-1) == 0  # a fully forced row: any valid draw, replaced below
            next_tokens = torch.multinomial(probs.view(K * B, -1), 1, generator=generator).view(K, B)
            # text is one token shared by every codebook (the reference draws K times, docs/design.md B16)
            next_tokens = torch.where(vis_next == M, next_tokens[0], next_tokens)
        else:
            next_tokens = scores.argmax(-1)  # (K, B)
        if force_newline is not None and not strict_image_structure:
            next_tokens = torch.where(force_newline, newline, next_tokens)
        if output_scores:
            all_scores.append(scores)

        next_tokens = torch.where(finished, pad, next_tokens)
        vis_next = torch.where(finished, M, vis_next)
        finished = finished | ((next_tokens[0] == eos) & (vis_next == M))
        ids = torch.cat([ids, next_tokens[:, :, None]], dim=-1)
        vis = torch.cat([vis, vis_next[:, None]], dim=-1)
        mask = torch.cat([mask, mask.new_ones(B, 1)], dim=-1)
        pos = torch.cat([pos, pos[:, -1:] + 1], dim=-1)
        if streamer is not None:
            streamer.put(next_tokens)
        if bool(finished.all()):
            break

    if streamer is not None:
        streamer.end()
    if return_dict_in_generate:
        return LibraGenerateOutput(
            sequences=ids, scores=tuple(all_scores) if output_scores else None, cache=cache
        )
    return ids


def _wants_static_cache(cache_implementation: str | None, compile: bool, use_cache: bool, num_beams: int):
    """Whether generate decodes on a static cache; refuses the combinations that cannot work."""
    if cache_implementation not in (None, "dynamic", "static"):
        raise ValueError(
            f"generate: cache_implementation={cache_implementation!r}; use 'dynamic' or 'static'."
        )
    if compile and cache_implementation == "dynamic":
        raise ValueError("generate: compile=True needs the static cache; leave cache_implementation unset.")
    static = compile or cache_implementation == "static"
    if static and not use_cache:
        raise ValueError("generate: a static cache needs use_cache=True.")
    if static and num_beams > 1:
        raise ValueError("generate: beam search reorders its cache; use the dynamic cache (compile=False).")
    return static


def _static_length(n: int) -> int:
    """Length of a static cache for n positions, rounded up to a multiple of 128: prompts of similar
    length share one compiled step (the masked extra slots cost little)."""
    return -(-n // 128) * 128


def _static_cache(model, max_length: int, image_queries: bool) -> LibraCache:
    """The model's static cache of this length, emptied: one storage serves every generate call (CUDA
    graphs replay only while what they write keeps its address). It stays allocated on the model."""
    cache = model.__dict__.get("_static_cache")
    if cache is None or cache.max_length != max_length:
        cache = LibraCache(model.config.num_hidden_layers, max_length=max_length)
        model.__dict__["_static_cache"] = cache
    cache.reset(image_queries)
    return cache


def _decoding_step_fn(model, compile: bool):
    """`model.decoding_step`, compiled once per model with compile=True (CUDA graphs on a GPU)."""
    if not compile:
        return model.decoding_step
    compiled = model.__dict__.get("_compiled_decoding_step")
    if compiled is None:
        mode = "reduce-overhead" if model.device.type == "cuda" else None
        compiled = torch.compile(model.decoding_step, mode=mode, fullgraph=True, dynamic=False)
        model.__dict__["_compiled_decoding_step"] = compiled
    return compiled


def _beam_search(
    self, input_ids, attention_mask, vision_indices, contiguous_signal, max_new_tokens, num_beams,
    length_penalty, eos, pad, return_dict,
):  # fmt: skip
    """Beam search over text continuations (the reference's is broken, docs/design.md B13).

    A hypothesis' score is its summed log-probability divided by (new tokens) ** length_penalty; a row is
    done once it has `num_beams` finished hypotheses (those ending in eos). Only text continuations are
    searched: prompts must end on a text slot, so every new token is text.
    """
    cfg = self.config
    M = cfg.max_vision_token_length
    if bool((vision_indices[:, -1] != M).any()):
        raise ValueError("generate: beam search continues text only; the prompt must end on a text slot.")
    K, B, N = input_ids.shape
    nb = num_beams
    expand = torch.arange(B, device=input_ids.device).repeat_interleave(nb)  # (B*nb,)
    ids = input_ids[:, expand]
    mask = attention_mask.long()[expand]
    vis = vision_indices[expand]
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    signal = contiguous_signal[expand] if contiguous_signal is not None else None
    cache = LibraCache(cfg.num_hidden_layers, image_queries=False)  # every query is text
    cache.capacity_hint = N + max_new_tokens
    beam_scores = torch.full((B, nb), float("-inf"), device=ids.device)
    beam_scores[:, 0] = 0.0  # all beams start identical: expand only the first one
    finished: list[list[tuple[float, torch.Tensor]]] = [[] for _ in range(B)]
    done = [False] * B

    for step in range(max_new_tokens):
        if step == 0:
            out = self(
                input_ids=ids, attention_mask=mask, vision_indices=vis, contiguous_signal=signal,
                position_ids=pos, past_key_values=cache, use_cache=True, last_logits_only=True,
            )  # fmt: skip
        else:
            out = self(
                input_ids=ids[:, :, -1:], attention_mask=mask, vision_indices=vis[:, -1:],
                position_ids=pos[:, -1:], past_key_values=cache, use_cache=True, last_logits_only=True,
            )  # fmt: skip
        logprobs = out.logits[0, :, -1, : cfg.vocab_size].float().log_softmax(-1)  # (B*nb, V)
        V = logprobs.shape[-1]
        candidates = (beam_scores.view(-1, 1) + logprobs).view(B, nb * V)
        top_scores, top_idx = candidates.topk(2 * nb, dim=-1)  # (B, 2nb): enough to refill nb beams past eos
        top_scores, top_idx = top_scores.tolist(), top_idx.tolist()
        new_source, new_token, new_score = [], [], []
        for b in range(B):
            chosen = []
            for score, idx in zip(top_scores[b], top_idx[b]):
                source, token = b * nb + idx // V, idx % V
                if done[b]:
                    chosen.append((b * nb, pad, 0.0 if not chosen else float("-inf")))
                elif token == eos:
                    seq = torch.cat([ids[0, source, N:], ids.new_tensor([token])])
                    finished[b].append((score / (len(seq) ** length_penalty), seq))
                else:
                    chosen.append((source, token, score))
                if len(chosen) == nb:
                    break
            while len(chosen) < nb:  # more than nb of the candidates ended in eos: fill with dead beams
                chosen.append((b * nb, pad, float("-inf")))
            if not done[b] and len(finished[b]) >= nb:
                done[b] = True
            new_source += [c[0] for c in chosen]
            new_token += [c[1] for c in chosen]
            new_score += [c[2] for c in chosen]
        source = torch.tensor(new_source, device=ids.device)
        token = torch.tensor(new_token, device=ids.device)
        beam_scores = torch.tensor(new_score, device=ids.device).view(B, nb)
        cache.reorder(source)
        ids = torch.cat([ids[:, source], token.expand(K, -1)[:, :, None]], dim=-1)
        vis = torch.cat([vis[source], vis.new_full((B * nb, 1), M)], dim=-1)
        mask = torch.cat([mask[source], mask.new_ones(B * nb, 1)], dim=-1)
        pos = torch.cat([pos[source], pos[source][:, -1:] + 1], dim=-1)
        if all(done):
            break

    n_new = ids.shape[-1] - N
    best = []
    for b in range(B):
        if not done[b]:  # ran out of length: the running beams compete with the finished ones
            for j in range(nb):
                finished[b].append(
                    (beam_scores[b, j].item() / (n_new**length_penalty), ids[0, b * nb + j, N:])
                )
        best.append(max(finished[b], key=lambda item: item[0]))
    out_ids = input_ids.new_full((K, B, N + n_new), pad)
    out_ids[:, :, :N] = input_ids
    for b, (_, seq) in enumerate(best):
        out_ids[:, b, N : N + len(seq)] = seq
    if return_dict:
        scores = torch.tensor([score for score, _ in best])
        return LibraGenerateOutput(sequences=out_ids, sequences_scores=scores)
    return out_ids
