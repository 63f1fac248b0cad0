"""LoRA-BEATs + pooling + ArcFace: gradient contract, masking, label map, checkpoint round trip."""

import pandas as pd
import pytest
import torch

from asd.errors import AsdError
from asd.model.asd_model import (ASDModel, ArcFace, AttentiveStatsPooling, HeadConfig, build_backbone, checkpoint_dict,
                                 count_parameters, label_map, load_epoch_checkpoint, weighted_mean_std)
from conftest import TINY_BACKBONE


def tiny_model(subcenters=(1, 1, 4), **head):
    backbone, identity = build_backbone(TINY_BACKBONE)
    config = HeadConfig(lora_rank=8, lora_alpha=8, embedding_dim=32, arcface_subcenters=4, **head)
    return ASDModel(backbone, head=config, subcenters=list(subcenters)), identity, config


def test_gradient_contract_after_two_steps():
    torch.manual_seed(0)
    model, _, _ = tiny_model()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x, mask = torch.randn(4, 300, 128), torch.zeros(4, 300, dtype=torch.bool)
    mask[2, 200:] = True
    labels = torch.tensor([0, 1, 2, 2])
    for _ in range(2):  # lora_A only gets a non-zero gradient once lora_B has moved away from 0
        optimizer.zero_grad()
        loss, logits = model(x, mask, labels)
        loss.backward()
        optimizer.step()
    assert torch.isfinite(loss) and torch.isfinite(logits).all()
    lora, frozen = [], []
    for name, param in model.named_parameters():
        (lora if "lora_" in name else frozen if name.startswith("backbone.") else []).append((name, param))
        if name.startswith("backbone.") and "lora_" not in name:
            assert not param.requires_grad and param.grad is None, name
        else:
            assert param.requires_grad and param.grad is not None, name
    # q_proj and v_proj of blocks 0-3 each carry A and B, nothing else does
    assert len(lora) == 4 * 2 * 2
    assert all(".q_proj." in n or ".v_proj." in n for n, _ in lora)
    assert all(p.grad.abs().sum() > 0 for n, p in lora), "every LoRA matrix must receive gradient"
    total, trainable = count_parameters(model)
    assert trainable == sum(p.numel() for n, p in model.named_parameters() if not n.startswith("backbone.")) + \
        sum(p.numel() for _, p in lora)
    assert total > trainable


def test_lora_only_on_requested_blocks():
    model, _, _ = tiny_model(lora_blocks=[1, 3])
    names = [n for n, _ in model.named_parameters() if "lora_A" in n]
    assert sorted({n.split(".")[3] for n in names}) == ["1", "3"]


@pytest.mark.parametrize("global_context", [True, False])
def test_pooling_ignores_padded_tokens(global_context):
    torch.manual_seed(0)
    pooling = AttentiveStatsPooling(dim=8, global_context=global_context)
    x = torch.randn(2, 10, 8)
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, 6:] = True
    garbage = x.clone()
    garbage[0, 6:7] = 1e3
    garbage[0, 7:] = float("nan")  # whatever a padded frame holds, it never reaches a sum
    pooled, pooled_garbage = pooling(x, mask), pooling(garbage, mask)
    assert torch.isfinite(pooled_garbage).all()
    torch.testing.assert_close(pooled_garbage, pooled, atol=1e-6, rtol=1e-5)
    # the padded clip pools like the clip alone, unpadded (a different shape: close, not bit-equal)
    torch.testing.assert_close(pooled[:1], pooling(x[:1, :6]), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(pooled[1:], pooling(x[1:]), atol=1e-6, rtol=1e-5)  # the unpadded one of the batch


def reference_pooling(pooling: AttentiveStatsPooling, x: torch.Tensor, valid: int | None = None) -> torch.Tensor:
    """ECAPA-TDNN attentive statistics pooling written out in float64, for one clip x [T, D] (first ``valid`` frames)."""
    x = x[:valid].double()
    w1, b1, w2, b2 = (t.detach().double() for t in (pooling.attention[0].weight, pooling.attention[0].bias,
                                                    pooling.attention[2].weight, pooling.attention[2].bias))
    h = x
    if pooling.global_context:
        mean, std = x.mean(dim=0), x.var(dim=0, unbiased=False).sqrt()
        h = torch.cat([x, mean.expand_as(x), std.expand_as(x)], dim=1)  # [T, 3D]
    weights = (torch.tanh(h @ w1.T + b1) @ w2.T + b2).softmax(dim=0)  # [T, D]: per channel over time
    mean = (weights * x).sum(dim=0)
    std = (weights * (x - mean).square()).sum(dim=0).sqrt()
    return torch.cat([mean, std])


@pytest.mark.parametrize("global_context", [True, False])
def test_pooling_matches_float64_ecapa_reference(global_context):
    torch.manual_seed(0)
    pooling = AttentiveStatsPooling(dim=8, global_context=global_context)
    assert pooling.attention[0].in_features == (24 if global_context else 8)  # [h_t ; mean ; std] or h_t
    # a large mean against a small spread: E[x^2] - mu^2 would lose most digits of the std in float32
    x = 10.0 + 0.01 * torch.randn(2, 50, 8)
    mask = torch.zeros(2, 50, dtype=torch.bool)
    mask[1, 30:] = True
    pooled = pooling(x, mask)
    assert pooled.dtype == torch.float32
    for b, valid in ((0, None), (1, 30)):
        expected = reference_pooling(pooling, x[b], valid)
        torch.testing.assert_close(pooled[b].double(), expected, atol=1e-7, rtol=1e-5)


def test_weighted_std_is_stable():
    torch.manual_seed(0)
    x = 1000.0 + 1e-2 * torch.randn(3, 40, 5)
    weights = torch.rand(3, 40, 5).softmax(dim=1)
    mean, std = weighted_mean_std(x, weights, eps=1e-12)
    xd, wd = x.double(), weights.double()
    mean64 = (wd * xd).sum(dim=1)
    std64 = (wd * (xd - mean64[:, None]).square()).sum(dim=1).sqrt()
    torch.testing.assert_close(mean.double(), mean64, atol=1e-4, rtol=0)
    torch.testing.assert_close(std.double(), std64, atol=0, rtol=1e-3)
    # the test has teeth: the one-pass E[x^2] - mu^2 in float32 is off by far more than that here
    naive = ((weights * x.square()).sum(dim=1) - mean.square()).clamp_min(0).sqrt()
    assert ((naive.double() - std64) / std64).abs().max() > 0.1
    # and it is clamped before the square root: a constant signal gives sqrt(eps), not nan
    _, std_constant = weighted_mean_std(torch.full((1, 4, 2), 3.0), torch.full((1, 4, 2), 0.25), eps=1e-6)
    torch.testing.assert_close(std_constant, torch.full((1, 2), 1e-3))


def test_global_context_off_is_the_plain_pooling():
    torch.manual_seed(0)
    pooling = AttentiveStatsPooling(dim=8, global_context=False)
    x = torch.randn(1, 12, 8)
    weights = pooling.attention(x).softmax(dim=1)  # the plain attention: h_t alone
    mean = (weights * x).sum(dim=1)
    std = ((weights * x.square()).sum(dim=1) - mean.square()).clamp_min(1e-6).sqrt()
    torch.testing.assert_close(pooling(x), torch.cat([mean, std], dim=-1), atol=1e-6, rtol=1e-5)
    with_context = AttentiveStatsPooling(dim=8)
    assert with_context.global_context  # the default
    # the model follows the config (default on) and an old checkpoint's head dict (no key) loads the default
    assert HeadConfig().pooling_global_context and HeadConfig.from_dict({"lora_rank": 8}).pooling_global_context
    model, _, _ = tiny_model(pooling_global_context=False)
    assert not model.pooling.global_context


def test_arcface_margin_and_subcentres():
    arcface = ArcFace(embedding_dim=4, subcenters=[1, 3], scale=10.0, margin=0.5)
    with torch.no_grad():
        arcface.weight.zero_()
        arcface.weight[0, 0, 0] = 1
        arcface.weight[1, :, 1] = 1
        arcface.weight[1, 2] = torch.tensor([0.0, 0.0, 1.0, 0.0])  # second class: a sub-centre on axis 2
        arcface.weight[0, 1:] = torch.tensor([0.0, 0.0, 1.0, 0.0])  # padded centres of class 0: must be ignored
    emb = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    cos = arcface.cosine(emb)
    assert torch.allclose(cos, torch.tensor([[0.0, 1.0]]), atol=1e-6)
    loss_margin, _ = arcface(emb, torch.tensor([1]))
    arcface.margin = 0.0
    loss_plain, _ = arcface(emb, torch.tensor([1]))
    assert loss_margin > loss_plain  # the margin makes the correct class harder


def test_label_map_attribute_and_domain_classes():
    manifest = pd.DataFrame({"machine": ["fan", "fan", "slider", "slider", "slider"],
                             "attributes": ["spd_1", "spd_2", "noAttribute", "noAttribute", "noAttribute"],
                             "domain": ["source", "target", "source", "target", "source"]})
    classes, hidden = label_map(manifest)
    assert classes == ["fan/spd_1", "fan/spd_2", "slider/source", "slider/target"]
    assert hidden == [0, 0, 1, 1]


def test_checkpoint_round_trip_and_identity_check(tmp_path):
    torch.manual_seed(0)
    model, identity, config = tiny_model()
    path = tmp_path / "epoch_1.pt"
    torch.save(checkpoint_dict(model, epoch=1, head=config, backbone=identity, classes=["a", "b", "c"],
                               subcenters=[1, 1, 4], metrics={}), path)
    assert path.stat().st_size < 2_000_000  # trained tensors only, not the backbone
    loaded, ckpt = load_epoch_checkpoint(path, backbone_settings=TINY_BACKBONE)
    x = torch.randn(2, 300, 128)
    model.eval()
    with torch.no_grad():
        # LoRA B is still zero here; tests/test_lora_merge.py covers trained adapters
        torch.testing.assert_close(loaded.embed(x), model.embed(x), atol=1e-5, rtol=1e-4)
    with pytest.raises(AsdError, match="num_layers|blocks"):
        load_epoch_checkpoint(path, backbone_settings={**TINY_BACKBONE, "num_layers": 3})
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(AsdError, match="epoch_1.pt cannot be read.*rerun the 'train' rule"):
        load_epoch_checkpoint(path, backbone_settings=TINY_BACKBONE)
