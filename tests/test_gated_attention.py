"""The blockwise CPU attention (asd.model.gated_attention) equals the plain formula and the fused path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import asd.model.beats
import asd.model.gated_attention as gated
from asd.model.beats import _SelfAttention


def inputs(*, batch=3, heads=4, tokens=40, head_dim=8, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, tokens, head_dim, generator=generator) for _ in range(3))
    # the gate's range in BEATs: a·(b·grep_a − 1) + 2 with a, b in (0, 1) and grep_a = 1
    gate = 1.0 + torch.rand(batch, heads, tokens, 1, generator=generator)
    position_bias = torch.randn(heads, tokens, tokens, generator=generator)
    padding = torch.zeros(batch, tokens, dtype=torch.bool)
    padding[1, -tokens // 4:] = True  # one clip with its last quarter padded
    return [t.to(dtype) for t in (q, k, v, gate, position_bias)] + [padding]


def output_and_gradients(attend, tensors, dtype):
    """Output and the gradients of q, k, v, gate and position_bias (pre-training trains the bias table)."""
    *trained, padding = tensors
    leaves = [t.detach().to(dtype).requires_grad_() for t in trained]
    out = attend(*leaves, padding)
    weights = torch.linspace(-1, 1, out.size(-1), dtype=dtype)  # an upstream gradient that is not all ones
    return [out.detach(), *torch.autograd.grad((out * weights).sum(), leaves)]


@pytest.mark.parametrize("block_bytes", [gated.BLOCK_BYTES, 2 * 40 * 40 * 4, 1])  # 4, 2 and 1 heads per block
def test_blockwise_equals_the_plain_formula_values_and_every_gradient(monkeypatch, block_bytes):
    monkeypatch.setattr(gated, "BLOCK_BYTES", block_bytes)
    tensors = inputs()
    reference = output_and_gradients(gated.reference_gated_attention, tensors, torch.float64)
    blockwise = output_and_gradients(gated.gated_attention, tensors, torch.float32)
    for name, got, expected in zip(("output", "q", "k", "v", "gate", "position_bias"), blockwise, reference):
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5, msg=name)
    assert reference[4].abs().sum() > 1.0  # the gate really gets a gradient
    assert reference[1][1].abs().sum() > 0 and blockwise[2][1, :, -10:].abs().max() == 0  # padded keys get none


def test_gradcheck_in_float64_with_padding():
    q, k, v, gate, position_bias, padding = inputs(batch=2, heads=2, tokens=6, head_dim=3, dtype=torch.float64)
    padding[1, -2:] = True
    leaves = [t.requires_grad_() for t in (q, k, v, gate, position_bias)]
    assert torch.autograd.gradcheck(lambda *a: gated.gated_attention(*a, padding), leaves)


def test_bf16_is_as_close_to_float64_as_the_fused_path():
    tensors = inputs(tokens=64, head_dim=16)
    reference = output_and_gradients(gated.reference_gated_attention, tensors, torch.float64)
    blockwise = output_and_gradients(gated.gated_attention, tensors, torch.bfloat16)
    fused = output_and_gradients(gated.fused_gated_attention, tensors, torch.bfloat16)
    for name, got, other, expected in zip(("output", "q", "k", "v", "gate", "position_bias"), blockwise, fused, reference):
        error = lambda t: ((t.double() - expected).abs().max() / expected.abs().max()).item()
        assert got.dtype == torch.bfloat16
        assert error(got) <= max(2e-2, 2 * error(other)), (name, error(got), error(other))


def test_a_fully_padded_clip_stays_finite():
    q, k, v, gate, position_bias, padding = inputs()
    padding[2] = True
    out, *grads = output_and_gradients(gated.gated_attention, (q, k, v, gate, position_bias, padding), torch.float32)
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)


def test_head_group_fits_the_block_budget():
    assert gated._head_group(12, 496, 4) == 2  # iter3, 10 s clip, fp32: 2 heads = 1.9 MiB
    assert gated._head_group(12, 496, 2) == 4  # bf16: twice the heads
    assert gated._head_group(4, 496, 4) == 2  # the demo backbone
    assert gated._head_group(12, 2000, 4) == 1  # long clips: one head at a time, never zero


def test_self_attention_training_on_cpu_takes_the_blockwise_path_and_equals_the_fused_one(monkeypatch):
    """A LoRA-like trainable q_proj makes the gate train: the module's CPU training path (blockwise) and the
    fused SDPA path give the same output and the same gradients for every trainable weight."""
    from asd.model.beats import DEMO

    torch.manual_seed(0)
    layer = _SelfAttention(DEMO, torch.nn.Embedding(DEMO.num_buckets, DEMO.encoder_attention_heads)).train()
    for parameter in layer.parameters():
        parameter.requires_grad_(False)
    layer.q_proj.weight.requires_grad_(True)
    layer.v_proj.weight.requires_grad_(True)
    x = torch.randn(2, 30, DEMO.encoder_embed_dim, requires_grad=True)
    position_bias = torch.randn(DEMO.encoder_attention_heads, 30, 30, requires_grad=True)  # as pre-training has it
    padding = torch.zeros(2, 30, dtype=torch.bool)
    padding[0, -7:] = True

    calls = []
    def run(attend):
        monkeypatch.setattr(asd.model.beats, "gated_attention", attend)
        out = layer(x, position_bias, padding)
        return [out, *torch.autograd.grad(out.square().sum(), (x, position_bias, layer.q_proj.weight,
                                                                layer.v_proj.weight))]

    blockwise = run(lambda *a: calls.append("blockwise") or gated.gated_attention(*a))
    fused = run(lambda *a: calls.append("fused") or gated.fused_gated_attention(*a))
    assert calls == ["blockwise", "fused"]
    for got, expected in zip(blockwise, fused):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
