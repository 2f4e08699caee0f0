"""The split loss (text CE once + per-codebook vision CE) equals the official joint-logits definition."""

import pytest
import torch
import torch.nn.functional as F

from libra.model.loss import PickedLogSoftmax


def official_loss(logits, labels):
    """docs/design.md §3.10: per codebook, shifted CE over the joint (text + vision) logits; mean over K."""
    K = logits.shape[0]
    losses = [
        F.cross_entropy(logits[k, :, :-1].reshape(-1, logits.shape[-1]), labels[k, :, 1:].reshape(-1))
        for k in range(K)
    ]
    return torch.stack(losses).mean()


def _random_labels(fixture_inputs, seed):
    """Labels with random valid targets of the right modality and random masking, like training data."""
    g = torch.Generator().manual_seed(seed)
    ids = fixture_inputs["input_ids"]
    labels = ids.clone()
    drop = torch.rand(ids.shape[1:], generator=g) < 0.3
    labels[:, drop] = -100
    labels[:, fixture_inputs["attention_mask"] == 0] = -100
    # targets a row cannot predict (text row -> image token, image row -> text token) are masked in
    # training data; keep them masked so the official loss is finite
    vision = fixture_inputs["vision_indices"] < 18
    cross = torch.zeros_like(vision)
    cross[:, 1:] = vision[:, 1:] != vision[:, :-1]
    labels[:, cross] = -100
    return labels


def test_loss_equals_joint_logits_definition(tiny_model, data_dir):
    from safetensors.torch import load_file

    inputs = load_file(data_dir / "libra_reference_tiny" / "inputs.safetensors")
    for case in ["batch0", "batch1"]:
        kw = {k.split(".", 1)[1]: v for k, v in inputs.items() if k.startswith(case + ".")}
        for seed in range(3):
            kw["labels"] = _random_labels(kw, seed)
            with torch.no_grad():
                out = tiny_model(**kw)
            reference = official_loss(out.logits, kw["labels"])
            assert abs(out.loss.item() - reference.item()) < 1e-5
            # the two logged parts recombine into the loss (masks are codebook independent here)
            targets = kw["labels"][0, :, 1:]
            n_image = ((targets >= 128) & (targets != -100)).sum()
            n_text = ((targets < 128) & (targets != -100)).sum()
            mixed = (n_text * out.loss_text + n_image * out.loss_image) / (n_text + n_image)
            assert abs(mixed.item() - out.loss.item()) < 1e-5


def test_cross_modal_target_gives_inf_like_the_reference(tiny_model, data_dir):
    from safetensors.torch import load_file

    inputs = load_file(data_dir / "libra_reference_tiny" / "inputs.safetensors")
    kw = {k.split(".", 1)[1]: v for k, v in inputs.items() if k.startswith("batch0.")}
    labels = kw.pop("labels").clone()
    boi = (kw["vision_indices"] == 0).nonzero()[0]
    labels[:, boi[0], boi[1]] = 144  # unmask the boi target: predicted by a text row
    with torch.no_grad():
        out = tiny_model(**kw, labels=labels)
    assert torch.isinf(out.loss) and torch.isinf(official_loss(out.logits, labels))


def test_training_forward_without_logits_has_same_loss_and_grads(tiny_model, data_dir):
    from safetensors.torch import load_file

    inputs = load_file(data_dir / "libra_reference_tiny" / "inputs.safetensors")
    kw = {k.split(".", 1)[1]: v for k, v in inputs.items() if k.startswith("batch0.")}
    out = tiny_model(**kw, return_logits=False)
    assert out.logits is None
    out.loss.backward()
    heads = [tiny_model.vision_lm_head.heads[1].weight, tiny_model.lm_head.weight]
    grads = [w.grad.clone() for w in heads]
    tiny_model.zero_grad()
    official_loss(tiny_model(**kw).logits, kw["labels"]).backward()
    for grad, w in zip(grads, heads):
        assert torch.allclose(grad, w.grad, atol=1e-6)
    tiny_model.zero_grad()
    assert abs(out.loss.item() - 3.614649772644043) < 1e-5  # the fixture's loss of batch0


@pytest.mark.parametrize("shape", [(7, 11), (2, 5, 9)])
def test_picked_log_softmax_matches_autograd(shape):
    """The hand-written backward against autograd's, with one class picked twice in a row (the text
    codebooks share their targets) and a double-precision gradcheck."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, shape[-1], (*shape[:-1], 2), generator=g)
    index[..., 1] = torch.where(torch.arange(shape[-2]) % 2 == 0, index[..., 0], index[..., 1])
    weight = torch.randn(*shape[:-1], 2, generator=g, dtype=torch.float64)
    ours = torch.autograd.grad((PickedLogSoftmax.apply(logits, index) * weight).sum(), logits)[0]
    plain = torch.autograd.grad((logits.log_softmax(-1).gather(-1, index) * weight).sum(), logits)[0]
    assert torch.allclose(PickedLogSoftmax.apply(logits, index), logits.log_softmax(-1).gather(-1, index))
    assert torch.allclose(ours, plain, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x: PickedLogSoftmax.apply(x, index), (logits,))
