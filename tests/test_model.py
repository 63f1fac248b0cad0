"""LoRA-BEATs + pooling + ArcFace: gradient contract, masking, label map, checkpoint round trip."""

import pandas as pd
import pytest
import torch

from asd.errors import AsdError
from asd.model import (ASDModel, ArcFace, AttentiveStatsPooling, HeadConfig, build_backbone, checkpoint_dict,
                       count_parameters, label_map, load_epoch_checkpoint)
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


def test_pooling_ignores_padded_tokens():
    torch.manual_seed(0)
    pooling = AttentiveStatsPooling(dim=8)
    x = torch.randn(1, 10, 8)
    mask = torch.zeros(1, 10, dtype=torch.bool)
    mask[0, 6:] = True
    garbage = x.clone()
    garbage[0, 6:] = 1e3
    assert torch.allclose(pooling(x, mask), pooling(garbage, mask), atol=1e-6)
    assert torch.allclose(pooling(x, mask), pooling(x[:, :6]), atol=1e-6)


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
