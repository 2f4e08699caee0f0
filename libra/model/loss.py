"""Libra's training loss without the (K, B, N, text + vision) joint logits (docs/design.md §3.10, P4).

The official loss is, per codebook k, the mean cross-entropy of the joint logits (text columns at text
positions, vision columns at image positions, -inf elsewhere) against the next-position labels, averaged
over the K codebooks. Because the other modality's columns are -inf, that equals:

* a position that predicts from a text row: cross-entropy over the text classes only;
* a position that predicts from an image row: cross-entropy of codebook k's head over the vision classes;
* a valid target of the other modality than its predicting row: +inf (the official value, kept).

So the text log-softmax is computed once (it is the same in every codebook) and only the rows that have
a valid target are sent through the heads, in fp32. The picked log-probabilities come from
`PickedLogSoftmax`: fused log-softmax passes rather than logsumexp minus the picked logit, whose
backward materialises exp(logits - lse) through three full-size elementwise ops (with a 32000-class
head, 9% of the operator time of a 2 x 2048 training step on the CPU). One deliberate difference: a
batch without any valid target gives loss 0 instead of the official NaN (0 / 0), so a fully masked
micro-batch cannot poison the gradients.
"""

import torch
from torch import nn
from torch.autograd.function import once_differentiable


class PickedLogSoftmax(torch.autograd.Function):
    """log_softmax(logits, -1).gather(-1, index), with a backward that writes the logits' gradient once.

    Autograd's own backward of that pair zero-fills a logits-sized buffer for the gather and then runs
    the log-softmax backward over it; here the gradient is -softmax * (sum of the incoming gradients)
    with the incoming gradients added at the picked classes: one full-size pass fewer over the
    (rows, classes) matrix, the largest tensor of a training step.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        log_p = logits.log_softmax(-1)
        ctx.save_for_backward(log_p, index)
        return log_p.gather(-1, index)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        log_p, index = ctx.saved_tensors
        grad_logits = torch.exp(log_p).mul_(-grad.sum(-1, keepdim=True))
        return grad_logits.scatter_add_(-1, index, grad), None


def libra_loss(
    h_text: torch.Tensor,
    h_vision: torch.Tensor,
    labels: torch.Tensor,
    routing,
    lm_head: nn.Linear,
    vision_head: nn.Module,
    vocab_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (loss, loss_text, loss_image).

    h_text (n_T, C) and h_vision (n_V, C or 2C) are the head inputs of the text and image rows in the
    sorted order of `routing`; labels (K, B, N) use joint ids (vision id = vocab_size + local id), -100
    ignored. loss = mean over codebooks k of (sum of CE over the valid targets of k) / (their count).
    loss_text is the mean CE over text targets, loss_image the mean CE over image targets (all codebooks),
    so with codebook-independent masks loss = (n_text * loss_text + n_image * loss_image) / n.
    """
    K, B, N = labels.shape
    if labels.shape[1:] != routing.vision_mask.shape:
        raise ValueError(f"labels must be (K, B, N) matching input_ids, got {tuple(labels.shape)}.")
    # target of position n is the label of position n + 1; the last position predicts nothing
    shifted = torch.cat([labels[..., 1:], labels.new_full((K, B, 1), -100)], dim=-1)
    targets = shifted.reshape(K, B * N).index_select(1, routing.perm)  # (K, B*N) sorted like the rows
    t_text, t_vision = targets[:, : routing.n_text], targets[:, routing.n_text :]

    # text rows: one log-softmax shared by every codebook, only over rows with a valid target
    rows = (t_text != -100).any(0).nonzero().squeeze(1)
    logits = lm_head(h_text.index_select(0, rows)).float()  # (n, V)
    t = t_text.index_select(1, rows)  # (K, n)
    is_text_target = (t >= 0) & (t < vocab_size)
    picked = PickedLogSoftmax.apply(logits, t.clamp(0, vocab_size - 1).T).T  # (K, n)
    text_sum = torch.where(is_text_target, -picked, 0.0).sum(1)  # (K,)
    n_text = is_text_target.sum(1)
    cross = ((t != -100) & ~is_text_target).sum(1)

    # image rows: codebook k's head over the vision classes
    rows = (t_vision != -100).any(0).nonzero().squeeze(1)
    logits = vision_head(h_vision.index_select(0, rows)).float()  # (K, n, VV)
    n_classes = logits.shape[-1]
    t = t_vision.index_select(1, rows) - vocab_size
    is_vision_target = (t >= 0) & (t < n_classes)
    picked = PickedLogSoftmax.apply(logits, t.clamp(0, n_classes - 1)[..., None])[..., 0]  # (K, n)
    vision_sum = torch.where(is_vision_target, -picked, 0.0).sum(1)  # (K,)
    n_vision = is_vision_target.sum(1)
    cross = cross + ((t != -100 - vocab_size) & ~is_vision_target).sum(1)

    n_valid = (n_text + n_vision).clamp(min=1)
    per_codebook = (text_sum + vision_sum) / n_valid
    # a target the predicting row's head cannot produce has probability 0 in the joint softmax
    per_codebook = per_codebook + torch.where(cross > 0, float("inf"), 0.0)
    loss = per_codebook.mean()
    loss_text = text_sum.sum() / n_text.sum().clamp(min=1)
    loss_image = vision_sum.sum() / n_vision.sum().clamp(min=1)
    return loss, loss_text, loss_image
