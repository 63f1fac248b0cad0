"""The head (pooling, projection, ArcFace) and the stored embeddings are float32 under any autocast.

Under bf16 autocast a ``.float()`` alone is undone by the next Linear / matmul; the head must run
with autocast off. The backbone keeps the caller's autocast.
"""

import pytest
import torch

from asd.model.asd_model import ASDModel, ArcFace, AttentiveStatsPooling, HeadConfig, build_backbone, float32_region
from conftest import TINY_BACKBONE


def bf16():
    return torch.autocast(device_type="cpu", dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    backbone, _ = build_backbone(TINY_BACKBONE)
    config = HeadConfig(lora_rank=8, lora_alpha=8, embedding_dim=32, arcface_subcenters=4)
    return ASDModel(backbone, head=config, subcenters=[1, 1, 4]).eval()


def batch():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3, 300, 128, generator=generator)
    mask = torch.zeros(3, 300, dtype=torch.bool)
    mask[1, 180:] = True
    return x, mask


def test_float32_region_switches_autocast_off():
    a = torch.randn(4, 4)
    with bf16():
        assert (a @ a).dtype == torch.bfloat16  # what autocast does to a plain float32 matmul
        with float32_region(a):
            assert (a @ a).dtype == torch.float32
        assert (a @ a).dtype == torch.bfloat16  # and only inside the region


def test_embed_under_bf16_autocast_is_the_float32_head_on_the_same_tokens(model):
    x, mask = batch()
    with torch.no_grad():
        with bf16():
            tokens, token_mask = model.backbone.forward_fbank(x, mask)
            embedding = model.embed(x, mask)
        assert tokens.dtype == torch.bfloat16  # the backbone does follow the autocast
        assert embedding.dtype == torch.float32
        # the same head, in float32 outside any autocast, on the same (bf16) tokens
        expected = model.projection(model.pooling(tokens.float(), token_mask))
        assert expected.dtype == torch.float32
        torch.testing.assert_close(embedding, expected, atol=1e-6, rtol=1e-5)
        # the test has teeth: the projection under autocast (the old behaviour) is bf16-rounded, far off that
        pooled = model.pooling(tokens.float(), token_mask)
        with bf16():
            rounded = model.projection(pooled)
        assert rounded.dtype == torch.bfloat16 and (rounded.float() - expected).abs().max() > 1e-3


def test_pooling_and_arcface_alone_are_float32_under_autocast():
    torch.manual_seed(0)
    pooling = AttentiveStatsPooling(dim=8)
    x = torch.randn(2, 10, 8).bfloat16()
    with bf16():
        pooled = pooling(x)
        cos = ArcFace(embedding_dim=16, subcenters=[1, 2], scale=10.0, margin=0.2).cosine(torch.randn(2, 16))
    assert pooled.dtype == torch.float32 and cos.dtype == torch.float32
    torch.testing.assert_close(pooled, pooling(x.float()), atol=1e-6, rtol=1e-5)


def test_arcface_clamp_is_effective_under_bf16_autocast():
    torch.manual_seed(0)
    arcface = ArcFace(embedding_dim=16, subcenters=[1, 3], scale=30.0, margin=0.2)
    # embeddings equal to a centre: cosine 1 up to rounding
    embedding = torch.stack([arcface.weight[0, 0], arcface.weight[1, 2]]).detach().clone().requires_grad_()
    labels = torch.tensor([0, 1])
    with bf16():
        cos = arcface.cosine(embedding)
        loss, logits = arcface(embedding, labels)
    assert cos.dtype == logits.dtype == loss.dtype == torch.float32
    torch.testing.assert_close(cos[[0, 1], [0, 1]], torch.ones(2), atol=1e-6, rtol=0)
    # float32 keeps the clamp at 1 - 1e-7 below 1 (in bf16 it rounds to 1: sin = 0, an infinite gradient)
    assert (logits / arcface.scale < 1).all()
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(embedding.grad).all()


def test_training_forward_under_bf16_autocast_is_float32(model):
    x, mask = batch()
    labels = torch.tensor([0, 1, 2])
    model.train()
    try:
        with bf16():
            loss, logits = model(x, mask, labels)
        assert loss.dtype == torch.float32 and logits.dtype == torch.float32
        loss.backward()
        assert torch.isfinite(loss)
        trained = [p for p in model.parameters() if p.requires_grad]
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained)
        assert all(p.grad.dtype == torch.float32 for p in trained)
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
