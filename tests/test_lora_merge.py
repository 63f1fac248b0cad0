"""Inference without peft: a checkpoint's LoRA adapters merged into a plain backbone embed like the peft model."""

import subprocess
import sys

import pytest
import torch

from asd.errors import AsdError
from asd.model.asd_model import (FROZEN_WEIGHT, ASDModel, HeadConfig, build_backbone, checkpoint_dict, load_epoch_checkpoint,
                                 load_trained_epoch, lora_checkpoint_keys, merge_lora_into_backbone, read_epoch_checkpoint)
from conftest import TINY_BACKBONE

F32 = dict(atol=1e-5, rtol=1e-4)  # float32 rounding: merged W0 + s·B@A vs peft's base(x) + s·B(A(x))


def peft_model(seed: int, **head) -> tuple[ASDModel, HeadConfig, dict]:
    """A peft model whose every trained tensor (LoRA A and B included: B is zero at init) is random."""
    backbone, identity = build_backbone(TINY_BACKBONE)
    # alpha != rank: the merge must use peft's scale alpha / r, not 1
    config = HeadConfig(**{"lora_rank": 8, "lora_alpha": 16, "embedding_dim": 32, "arcface_subcenters": 4, **head})
    model = ASDModel(backbone, head=config, subcenters=[1, 1, 4])
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=generator) * (0.05 if "lora_" in name else 0.2))
    return model.eval(), config, identity


def save(model, config, identity, path, epoch):
    torch.save(checkpoint_dict(model, epoch=epoch, head=config, backbone=identity, classes=["a", "b", "c"],
                               subcenters=[1, 1, 4], metrics={}), path)


def fbank_batch():
    x = torch.randn(3, 300, 128, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(3, 300, dtype=torch.bool)
    mask[1, 180:] = True  # one padded clip
    return x, mask


def test_checkpoint_keys_are_the_peft_keys():
    model, config, _ = peft_model(0, lora_blocks=[1, 3])
    lora = {k for k in model.trained_state() if "lora_" in k}
    assert lora == {key for _, *pair in lora_checkpoint_keys(config.lora_blocks) for key in pair}
    assert model.backbone.encoder.layers[0].self_attn.q_proj.__class__ is torch.nn.Linear  # block 0 not adapted


@pytest.mark.parametrize("blocks", [[0, 1, 2, 3], [1, 3]])
def test_merged_embeddings_equal_peft_embeddings_across_epochs(tmp_path, blocks):
    x, mask = fbank_batch()
    peft_models, paths = [], []
    for epoch in (1, 2):
        model, config, identity = peft_model(epoch, lora_blocks=blocks)
        paths.append(tmp_path / f"epoch_{epoch}.pt")
        save(model, config, identity, paths[-1], epoch)
        peft_models.append(model)
    merged, first = load_epoch_checkpoint(paths[0], backbone_settings=TINY_BACKBONE)
    assert "lora_" not in "".join(n for n, _ in merged.named_parameters())
    assert not any(type(m).__module__.startswith("peft") for m in merged.modules())
    plain = build_backbone(TINY_BACKBONE)[0].eval()
    with torch.no_grad():
        reference = [m.embed(x, mask) for m in peft_models]
        assert (reference[0] - reference[1]).abs().max() > 1e-2  # the epochs differ, so a mix-up would show
        # the adapters really move the backbone: without them the embedding is different
        merged_plain = plain.forward_fbank(x, mask)[0]
        assert (merged.backbone.forward_fbank(x, mask)[0] - merged_plain).abs().max() > 1e-3
        torch.testing.assert_close(merged.embed(x, mask), reference[0], **F32)
        # epoch 2 then epoch 1 again on the same model: each merge starts from the frozen W0
        for path, expected in ((paths[1], reference[1]), (paths[0], reference[0]), (paths[1], reference[1])):
            load_trained_epoch(merged, path, read_epoch_checkpoint(path))
            torch.testing.assert_close(merged.embed(x, mask), expected, **F32)
    for block in blocks:  # W0 is the backbone's own weight, untouched by merging
        attention = merged.backbone.encoder.layers[block].self_attn
        torch.testing.assert_close(getattr(attention.q_proj, FROZEN_WEIGHT), plain.encoder.layers[block].self_attn.q_proj.weight,
                                   atol=0, rtol=0)
    assert all(FROZEN_WEIGHT not in k for k in merged.state_dict())


def test_merge_is_refused_on_wrong_lora_shapes_without_touching_weights(tmp_path):
    model, config, identity = peft_model(0)
    path = tmp_path / "epoch_1.pt"
    save(model, config, identity, path, 1)
    merged, ckpt = load_epoch_checkpoint(path, backbone_settings=TINY_BACKBONE)
    before = {k: v.clone() for k, v in merged.backbone.state_dict().items()}
    state = dict(ckpt["state"])
    key = next(k for k in state if k.endswith("layers.2.self_attn.v_proj.lora_B.default.weight"))
    state[key] = state[key][:, :4]
    with pytest.raises(RuntimeError, match=r"size mismatch for .*layers\.2\.self_attn\.v_proj\.lora_B"):
        merge_lora_into_backbone(merged.backbone, state, head=config)
    assert all(torch.equal(before[k], v) for k, v in merged.backbone.state_dict().items())
    with pytest.raises(AsdError, match=r"does not fit the model \(size mismatch .*rerun the 'train' rule"):
        load_trained_epoch(merged, path, {**ckpt, "state": state})
    del state[key]
    with pytest.raises(AsdError, match=r"does not fit the model \(.*trained-state keys differ: missing"):
        load_trained_epoch(merged, path, {**ckpt, "state": state})
    with pytest.raises(TypeError, match="no adapters to save"):
        merged.trained_state()


def test_inference_imports_neither_peft_nor_transformers():
    code = ("import sys, asd.model.embed, asd.submission.assemble, asd.model.asd_model\n"
            "print(sorted(m for m in ('peft', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
