"""BEATs audio transformer, written from the published architecture facts and checkpoint-compatible.

Loads the official microsoft/unilm BEATs checkpoints (``{'cfg', 'model'}``) with
``load_state_dict(strict=True)`` and reproduces the reference numbers (conformance-tested in
float32). Differences from the reference are speed-only (bench/bench_backbone.py measures them):

- attention runs through ``scaled_dot_product_attention`` with the gated relative position bias
  as an additive mask in the compute dtype, built from a contiguous [H, N, N] bias table, on
  GPUs; on CPUs through the blockwise ``asd.model.gated_attention`` (same maths, cache-sized blocks);
- the convolutional position embedding is evaluated by FFT (same result within float32 rounding);
- tables that depend only on frozen weights (weight-normalised conv kernel spectrum, position
  bias) are cached until those weights change, and the bucket table per sequence length;
- the encoder can be truncated to its first ``num_layers`` blocks (the rest is never built).

Shapes: B clips, S samples, F fbank frames, N tokens (time-major: token = t'·(128/16) + f'),
E encoder width, H heads, D head width.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio.compliance.kaldi as kaldi
from torch import Tensor, nn

from asd.errors import AsdError
from asd.model.gated_attention import fused_gated_attention, gated_attention

SAMPLE_RATE = 16000
NUM_MEL_BINS = 128
FBANK_MEAN = 15.41663
FBANK_STD = 6.55582
EXPECTED_CHECKPOINT = "an official BEATs checkpoint such as BEATs_iter3.pt from microsoft/unilm (beats/)"


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class BEATsConfig:
    """Every field of the reference ``BEATsConfig``, with the reference defaults.

    ``encoder_layerdrop``, ``finetuned_model``, ``predictor_dropout`` and ``predictor_class`` are
    kept so a checkpoint's cfg round-trips; they do not affect this module: no predictor head is
    built, and layerdrop (a pre-training regulariser) is not applied.
    """

    input_patch_size: int = -1
    embed_dim: int = 512
    conv_bias: bool = False
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"
    layer_wise_gradient_decay_ratio: float = 1.0
    layer_norm_first: bool = False
    deep_norm: bool = False
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    encoder_layerdrop: float = 0.0
    dropout_input: float = 0.0
    conv_pos: int = 128
    conv_pos_groups: int = 16
    relative_position_embedding: bool = False
    num_buckets: int = 320
    max_distance: int = 1280
    gru_rel_pos: bool = False
    finetuned_model: bool = False
    predictor_dropout: float = 0.1
    predictor_class: int = 527

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "BEATsConfig":
        """Build from a checkpoint cfg dict; unknown keys (newer/older reference versions) are ignored."""
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check_supported(self, source: str = "BEATs config") -> None:
        """Raise AsdError unless this is the BEATs architecture family this module implements."""
        required = {
            "layer_norm_first": False,
            "relative_position_embedding": True,
            "gru_rel_pos": True,
            "activation_fn": "gelu",
        }
        for key, value in required.items():
            if getattr(self, key) != value:
                raise AsdError(
                    f"{source}: cfg key {key!r} is {getattr(self, key)!r}, but only {value!r} is supported "
                    f"(the released BEATs iter1-3 architecture); use {EXPECTED_CHECKPOINT}."
                )
        if self.input_patch_size <= 0:
            raise AsdError(f"{source}: cfg key 'input_patch_size' must be positive (16 in released checkpoints).")
        for key, divisor in (("encoder_attention_heads", self.encoder_attention_heads), ("conv_pos_groups", self.conv_pos_groups)):
            if divisor <= 0 or self.encoder_embed_dim % divisor:
                raise AsdError(f"{source}: cfg key {key!r} ({divisor}) must divide encoder_embed_dim ({self.encoder_embed_dim}).")


# The released iter3 architecture (../conformance/beats_iter3_cfg.json); dropouts 0 as in that file.
ITER3 = BEATsConfig(
    input_patch_size=16,
    layer_wise_gradient_decay_ratio=0.6,
    deep_norm=True,
    dropout=0.0,
    attention_dropout=0.0,
    relative_position_embedding=True,
    max_distance=800,
    gru_rel_pos=True,
)

# A small iter3-shaped model for random-init demos and fast tests.
DEMO = dataclasses.replace(
    ITER3,
    embed_dim=64,
    encoder_embed_dim=96,
    encoder_layers=4,
    encoder_attention_heads=4,
    encoder_ffn_embed_dim=192,
    conv_pos=32,
    conv_pos_groups=4,
)


# ----------------------------------------------------------------------------- front end


def fbank(waveforms: Tensor, sample_rate: int = SAMPLE_RATE) -> Tensor:
    """Normalised Kaldi log-mel fbank of each clip: [B, S] in [-1, 1] -> [B, F, 128] float32."""
    if sample_rate != SAMPLE_RATE:
        raise AsdError(f"BEATs needs {SAMPLE_RATE} Hz audio but got {sample_rate} Hz; resample the clips first.")
    if waveforms.dim() != 2:
        raise ValueError(f"fbank expects waveforms [batch, samples], got shape {tuple(waveforms.shape)}")
    # The reference runs the front end in float32 even when the model runs in reduced precision.
    with torch.autocast(device_type=waveforms.device.type, enabled=False):
        scaled = waveforms.float() * 2**15  # Kaldi works on 16-bit integer sample scale
        banks = [
            kaldi.fbank(
                clip.unsqueeze(0),  # [1, S]
                num_mel_bins=NUM_MEL_BINS,
                sample_frequency=SAMPLE_RATE,
                frame_length=25,
                frame_shift=10,
            )
            for clip in scaled
        ]
        return (torch.stack(banks) - FBANK_MEAN) / (2 * FBANK_STD)  # [B, F, 128]


def flat_spectrum_reference(min_filter_weight: float) -> tuple[np.ndarray, np.ndarray]:
    """What a sound without spectral fine structure reads through ``fbank`` as a mean log-mel spectrum
    minus its mean [128] (60 s of seeded white noise: the filterbank's ripple, where the lowest mel
    filters each cover one FFT bin, and the bias of the log of noisy energies), and the bins whose
    mel filters hold at least ``min_filter_weight`` (the nearly empty ones carry no information)."""
    noise = np.random.default_rng(0).standard_normal((6, 10 * SAMPLE_RATE)) * 0.1  # [6 clips, 10 s]
    log_mel = fbank(torch.from_numpy(noise).float()).double().numpy().mean(1)  # [6, 128]
    reference = (log_mel - log_mel.mean(1, keepdims=True)).mean(0)  # [128]
    # the mel banks kaldi.fbank uses with the settings above (512-point FFT of 25 ms frames)
    banks, _ = kaldi.get_mel_banks(NUM_MEL_BINS, 512, float(SAMPLE_RATE), 20.0, 0.0, 100.0, -500.0, 1.0)
    return reference, np.flatnonzero(banks.sum(1).numpy() >= min_filter_weight)


def _group_padding_mask(padding_mask: Tensor, length: int) -> Tensor:
    """The reference reduction of a padding mask to ``length`` steps: [B, M] -> [B, length].

    Drops the trailing ``M mod length`` entries, splits the rest into ``length`` groups of
    consecutive entries, and marks a step padded only if its whole group is padded.
    """
    extra = padding_mask.size(1) % length
    if extra:
        padding_mask = padding_mask[:, :-extra]
    return padding_mask.reshape(padding_mask.size(0), length, -1).all(-1)  # [B, length, M // length] -> [B, length]


def frame_padding_mask(padding_mask: Tensor, num_frames: int) -> Tensor:
    """Sample-level padding mask [B, S] (True = padded) -> frame-level mask [B, num_frames]."""
    return _group_padding_mask(padding_mask, num_frames)


# ----------------------------------------------------------------------------- relative positions


def relative_position_bucket(relative_positions: Tensor, *, num_buckets: int, max_distance: int) -> Tensor:
    """Bidirectional log-spaced bucket of each offset (key index − query index), as int64.

    Half the buckets per direction; exact below half of that, logarithmic up to ``max_distance``,
    clamped beyond. The log is taken in float32 exactly as the reference does, so the table matches
    bucket for bucket.
    """
    half = num_buckets // 2
    max_exact = half // 2
    distance = relative_positions.abs()
    log_ratio = torch.log(distance.clamp(min=1).float() / max_exact) / math.log(max_distance / max_exact)
    log_bucket = (max_exact + (log_ratio * (half - max_exact)).to(torch.long)).clamp(max=half - 1)
    bucket = torch.where(distance < max_exact, distance, log_bucket)
    return bucket + (relative_positions > 0).to(torch.long) * half


@functools.lru_cache(maxsize=16)
def _bucket_matrix(length: int, num_buckets: int, max_distance: int, device: torch.device) -> Tensor:
    """Bucket index of every (query, key) pair: [N, N] int64, cached because every step reuses it."""
    positions = torch.arange(length, dtype=torch.long)
    offsets = positions[None, :] - positions[:, None]  # [N, N]: key − query
    return relative_position_bucket(offsets, num_buckets=num_buckets, max_distance=max_distance).to(device)


# ----------------------------------------------------------------------------- modules


def _gelu_float32(x: Tensor) -> Tensor:
    # The reference evaluates GELU in float32 and casts back. PyTorch's CPU and CUDA kernels already
    # compute bf16/fp16 GELU in float32 and round once (bit-identical), so the two casts are skipped.
    return F.gelu(x)


def _fft_size(length: int) -> int:
    """Smallest 2^a or 3·2^a >= length: FFT sizes with large prime factors (e.g. 5^4) run ~4x slower."""
    power = 1 << max(length - 1, 1).bit_length()
    return 3 * power // 4 if 3 * power // 4 >= length else power


class _FrozenCache:
    """One derived tensor, kept while its source tensors are unchanged and need no gradient.

    Unchanged = same storage and in-place version counter (load_state_dict, optimizer steps and
    ``.to()`` all change one of them). With gradients needed the value is recomputed every call.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._value: Tensor | None = None

    def get(self, sources: tuple[Tensor, ...], extra: tuple, compute) -> Tensor:
        if any(t.is_inference() for t in sources) or (torch.is_grad_enabled() and any(t.requires_grad for t in sources)):
            return compute()
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in sources) + extra
        if key != self._key:
            # A normal (non-inference) tensor, so a later grad-enabled forward may save it for backward.
            with torch.inference_mode(False), torch.no_grad():
                self._value = compute()
            self._key = key
        return self._value


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``scale`` (reference layer-wise gradient decay)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


class _WeightNormConv1d(nn.Module):
    """Grouped Conv1d under legacy weight normalisation over dim 2 (checkpoint keys weight_g / weight_v).

    Evaluated as an FFT convolution in float32: with the 128-tap kernel of iter3 the direct grouped
    conv is the slowest op of a forward on CPU (~10x slower, and bf16 only ~3x faster); the FFT result
    equals ``F.conv1d(..., padding=K//2, groups=G)[..., :N]`` within float32 rounding (~2e-6).
    """

    def __init__(self, channels: int, kernel_size: int, groups: int, *, init_std: float) -> None:
        super().__init__()
        self.groups = groups
        self.padding = kernel_size // 2
        self._spectrum_cache = _FrozenCache()
        self.bias = nn.Parameter(torch.zeros(channels))  # defined first to mirror the checkpoint's key order
        weight_v = torch.randn(channels, channels // groups, kernel_size) * init_std  # [E, E/groups, K]
        self.weight_g = nn.Parameter(self._norm(weight_v))  # [1, 1, K]: initially weight == weight_v
        self.weight_v = nn.Parameter(weight_v)

    @staticmethod
    def _norm(weight_v: Tensor) -> Tensor:
        return torch.linalg.vector_norm(weight_v, dim=(0, 1), keepdim=True)  # [1, 1, K]

    def _kernel_spectrum(self, size: int) -> Tensor:
        """FFT of the flipped weight-normalised kernel (a correlation is a convolution with it): [F, G, E/G in, E/G out]."""
        weight_v = self.weight_v.float()
        weight = weight_v * (self.weight_g.float() / self._norm(weight_v))  # [E, E/G, K]
        spectrum = torch.fft.rfft(weight.flip(-1), n=size)  # [E, E/G, F]
        per_group = weight.size(1)
        return spectrum.view(self.groups, per_group, per_group, -1).permute(3, 0, 2, 1).contiguous()  # [G, out, in, F] -> [F, G, in, out]

    def forward(self, x: Tensor) -> Tensor:
        """x [B, N, E] (token-major) -> [B, N, E]: the first N steps of the padded conv, as the reference keeps."""
        batch, tokens, channels = x.shape
        taps = self.weight_v.size(-1)
        size = _fft_size(tokens + taps - 1)  # room for the full linear convolution: no circular wrap-around
        spectrum = self._spectrum_cache.get((self.weight_g, self.weight_v), (size,), lambda: self._kernel_spectrum(size))
        with torch.autocast(device_type=x.device.type, enabled=False):  # complex float32 throughout
            signal = torch.fft.rfft(x.float(), n=size, dim=1)  # [B, F, E]
            signal = signal.view(batch, -1, self.groups, channels // self.groups).permute(1, 2, 0, 3)  # [F, G, B, E/G]
            product = torch.matmul(signal, spectrum)  # [F, G, B, E/G]: per frequency, each group mixes its channels
            product = product.permute(2, 0, 1, 3).reshape(batch, -1, channels)  # [B, F, E]
            full = torch.fft.irfft(product, n=size, dim=1)  # [B, size, E]: full linear convolution
            start = taps - 1 - self.padding  # full[start + t] is conv output step t
            return (full[:, start:start + tokens] + self.bias.float()).to(x.dtype)  # [B, N, E]


class _SelfAttention(nn.Module):
    """Multi-head self-attention with a query-gated relative position bias."""

    def __init__(self, config: BEATsConfig, relative_attention_bias: nn.Embedding) -> None:
        super().__init__()
        dim, self.num_heads = config.encoder_embed_dim, config.encoder_attention_heads
        self.head_dim = dim // self.num_heads
        self.dropout = config.attention_dropout
        self.grep_a = nn.Parameter(torch.ones(1, self.num_heads, 1, 1))
        # One Embedding shared by all layers, registered in each only for checkpoint key compatibility;
        # the encoder looks it up once per forward and passes the bias to every layer.
        self.relative_attention_bias = relative_attention_bias
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.grep_linear = nn.Linear(self.head_dim, 8)

    def _heads(self, x: Tensor) -> Tensor:
        batch, tokens, _ = x.shape
        return x.view(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2)  # [B, N, E] -> [B, H, N, D]

    def forward(self, x: Tensor, position_bias: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        """x [B, N, E], position_bias [H, N, N] contiguous, key_padding_mask [B, N] (True = padded) -> [B, N, E]."""
        batch, tokens, dim = x.shape
        q, k, v = self._heads(self.q_proj(x)), self._heads(self.k_proj(x)), self._heads(self.v_proj(x))
        # Gate per head and query: 8 logits -> 2 groups of 4 summed -> sigmoid -> (a, b). Summing the
        # weight rows first is the same linear map with 2 outputs instead of 8.
        gate_weight = self.grep_linear.weight.view(2, 4, self.head_dim).sum(1)  # [8, D] -> [2, D]
        gate_logits = F.linear(q, gate_weight, self.grep_linear.bias.view(2, 4).sum(1))  # [B, H, N, 2]
        gate_a, gate_b = torch.sigmoid(gate_logits.float()).chunk(2, dim=-1)  # each [B, H, N, 1]
        gate = gate_a * (gate_b * self.grep_a.float() - 1.0) + 2.0
        dropout = self.dropout if self.training else 0.0
        if not q.is_cuda and dropout == 0.0:
            # CPUs: a few heads at a time, the mask never materialised for the whole batch (SDPA's fused CPU
            # kernel cannot return the gradient of a trained gate, and reads a [B, H, N, N] mask at inference).
            attended = gated_attention(q, k, v, gate, position_bias, key_padding_mask)  # [B, H, N, D]
        else:
            attended = fused_gated_attention(q, k, v, gate, position_bias, key_padding_mask, dropout=dropout)
        return self.out_proj(attended.transpose(1, 2).reshape(batch, tokens, dim))


class _EncoderLayer(nn.Module):
    """Post-LN transformer block with DeepNorm residual scaling."""

    def __init__(self, config: BEATsConfig, relative_attention_bias: nn.Embedding) -> None:
        super().__init__()
        dim = config.encoder_embed_dim
        self.residual_scale = (2 * config.encoder_layers) ** 0.25 if config.deep_norm else 1.0
        self.dropout, self.activation_dropout = config.dropout, config.activation_dropout
        self.self_attn = _SelfAttention(config, relative_attention_bias)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, config.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_embed_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, position_bias: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        attended = F.dropout(self.self_attn(x, position_bias, key_padding_mask), self.dropout, self.training)
        x = self.self_attn_layer_norm(torch.add(attended, x, alpha=self.residual_scale))  # x·scale + attended, one pass
        hidden = F.dropout(_gelu_float32(self.fc1(x)), self.activation_dropout, self.training)
        hidden = F.dropout(self.fc2(hidden), self.dropout, self.training)
        return self.final_layer_norm(torch.add(hidden, x, alpha=self.residual_scale))


class _Encoder(nn.Module):
    def __init__(self, config: BEATsConfig, num_layers: int) -> None:
        super().__init__()
        dim = config.encoder_embed_dim
        self.config = config
        # Sequential only so the checkpoint keys read pos_conv.0.*.
        self.pos_conv = nn.Sequential(
            _WeightNormConv1d(
                dim,
                config.conv_pos,
                config.conv_pos_groups,
                init_std=math.sqrt(4 * (1.0 - config.dropout) / (config.conv_pos * dim)),
            )
        )
        relative_attention_bias = nn.Embedding(config.num_buckets, config.encoder_attention_heads)
        self.layers = nn.ModuleList(_EncoderLayer(config, relative_attention_bias) for _ in range(num_layers))
        self.layer_norm = nn.LayerNorm(dim)
        self._position_bias_cache = _FrozenCache()

    def _position_bias(self, tokens: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """[H, N, N] contiguous in ``dtype``: a permuted view would make every layer's gate product ~3x slower."""
        table = self.layers[0].self_attn.relative_attention_bias.weight  # [buckets, H]

        def compute() -> Tensor:
            buckets = _bucket_matrix(tokens, self.config.num_buckets, self.config.max_distance, device)  # [N, N]
            return F.embedding(buckets, table).permute(2, 0, 1).to(dtype).contiguous()  # [N, N, H] -> [H, N, N]

        return self._position_bias_cache.get((table,), (tokens, dtype), compute)

    def forward(self, x: Tensor, padding_mask: Tensor | None) -> list[Tensor]:
        """x [B, N, E] -> [encoder input, output of block 1, ..., output of the last block]."""
        if padding_mask is not None and not padding_mask.any():
            padding_mask = None  # nothing padded: skip the masking passes (same result)
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        tokens, device = x.size(1), x.device
        x = x + _gelu_float32(self.pos_conv(x))  # [B, N, E]
        x = F.dropout(self.layer_norm(x), self.config.dropout, self.training)
        hidden_states = [x]
        # The attention mask is built in the dtype the projections will produce (autocast's, else the input's).
        compute_dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else x.dtype
        position_bias = self._position_bias(tokens, compute_dtype, device)
        decay = self.config.layer_wise_gradient_decay_ratio
        for layer in self.layers:
            if decay != 1.0 and torch.is_grad_enabled():
                x = _ScaleGradient.apply(x, decay)
            x = layer(x, position_bias, padding_mask)
            hidden_states.append(x)
        return hidden_states


class BEATs(nn.Module):
    """BEATs backbone; ``num_layers`` keeps only the first N transformer blocks (default: all).

    ``random_init`` is True until real weights are loaded (``load_beats`` clears it), so outputs can
    be labelled as coming from a random-init backbone.
    """

    def __init__(self, config: BEATsConfig = ITER3, *, num_layers: int | None = None) -> None:
        super().__init__()
        config.check_supported()
        num_layers = config.encoder_layers if num_layers is None else num_layers
        if not 1 <= num_layers <= config.encoder_layers:
            raise AsdError(f"num_layers must be between 1 and encoder_layers ({config.encoder_layers}), got {num_layers}; fix the num_layers setting.")
        self.config, self.num_layers, self.random_init = config, num_layers, True
        patch = config.input_patch_size
        # Definition order mirrors the checkpoint's key order.
        self.post_extract_proj = (
            nn.Linear(config.embed_dim, config.encoder_embed_dim) if config.embed_dim != config.encoder_embed_dim else None
        )
        self.patch_embedding = nn.Conv2d(1, config.embed_dim, kernel_size=patch, stride=patch, bias=config.conv_bias)
        self.encoder = _Encoder(config, num_layers)
        self.layer_norm = nn.LayerNorm(config.embed_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        # BERT-style init, then DeepNorm's scaled Xavier init (only matters for random-init runs).
        for module in self.encoder.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
        beta = (8 * self.config.encoder_layers) ** -0.25 if self.config.deep_norm else 1.0
        for layer in self.encoder.layers:
            attention = layer.self_attn
            for linear, gain in ((attention.q_proj, 1.0), (attention.k_proj, 1.0), (attention.v_proj, beta),
                                 (attention.out_proj, beta), (layer.fc1, beta), (layer.fc2, beta)):
                nn.init.xavier_normal_(linear.weight, gain=gain)

    def forward(
        self, fbank: Tensor, frame_padding_mask: Tensor | None = None, output_layers: bool = False
    ) -> tuple[Tensor, Tensor | None] | tuple[Tensor, Tensor | None, tuple[Tensor, ...]]:
        """Normalised fbank [B, F, 128] (+ frame mask [B, F], True = padded) -> (features [B, N, E], token mask [B, N]).

        With ``output_layers`` also returns the hidden states: (encoder input, block 1, ..., block num_layers).
        """
        patches = self.patch_embedding(fbank.unsqueeze(1))  # [B, 1, F, 128] -> [B, C, F/16, 128/16]
        tokens = patches.flatten(2).transpose(1, 2)  # [B, C, N] -> [B, N, C], time-major
        tokens = self.layer_norm(tokens)
        token_mask = None if frame_padding_mask is None else _group_padding_mask(frame_padding_mask, tokens.size(1))
        if self.post_extract_proj is not None:
            tokens = self.post_extract_proj(tokens)  # [B, N, E]
        tokens = F.dropout(tokens, self.config.dropout_input, self.training)
        hidden_states = self.encoder(tokens, token_mask)
        if output_layers:
            return hidden_states[-1], token_mask, tuple(hidden_states)
        return hidden_states[-1], token_mask

    def forward_fbank(
        self, fbank: Tensor, frame_padding_mask: Tensor | None = None, output_layers: bool = False
    ) -> tuple[Tensor, Tensor | None] | tuple[Tensor, Tensor | None, tuple[Tensor, ...]]:
        """Entry point for cached fbank features; see ``forward``."""
        return self(fbank, frame_padding_mask, output_layers)

    def extract_features(self, waveforms: Tensor, padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Reference API: waveforms [B, S] (+ sample mask [B, S], True = padded) -> (features [B, N, E], token mask)."""
        features = fbank(waveforms)
        frame_mask = None if padding_mask is None else frame_padding_mask(padding_mask, features.size(1))
        return self(features, frame_mask)


# ----------------------------------------------------------------------------- checkpoints

_LAYER_KEY = re.compile(r"^encoder\.layers\.(\d+)\.")
_SHARED_BIAS_KEY = "encoder.layers.{}.self_attn.relative_attention_bias.weight"


def _key_list(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown} (+{len(keys) - limit} more)" if len(keys) > limit else shown


def adapt_checkpoint(
    state: Any, *, num_layers: int | None = None, source: str = "<checkpoint>"
) -> tuple[BEATsConfig, dict[str, Tensor]]:
    """Official checkpoint dict {'cfg', 'model', ...} -> (config, state_dict for ``BEATs(config, num_layers=...)``).

    Drops fine-tuning head weights (``predictor.*``) and blocks at or beyond ``num_layers``; every
    other mismatch raises AsdError naming ``source``.
    """
    if not isinstance(state, Mapping) or not isinstance(state.get("cfg"), Mapping) or not isinstance(state.get("model"), Mapping):
        found = sorted(map(str, state)) if isinstance(state, Mapping) else type(state).__name__
        raise AsdError(
            f"{source}: not a BEATs checkpoint (expected a dict with 'cfg' and 'model' dicts, found {found}); "
            f"use {EXPECTED_CHECKPOINT}."
        )
    config = BEATsConfig.from_dict(state["cfg"])
    config.check_supported(source)
    num_layers = config.encoder_layers if num_layers is None else num_layers
    with torch.device("meta"):  # shapes only: no memory, no init cost
        expected = {key: tuple(value.shape) for key, value in BEATs(config, num_layers=num_layers).state_dict().items()}

    weights: dict[str, Tensor] = {}
    for key, value in state["model"].items():
        layer = _LAYER_KEY.match(key)
        if key.startswith("predictor.") or (layer and config.encoder_layers > int(layer[1]) >= num_layers):
            continue
        weights[key] = value
    missing = [key for key in expected if key not in weights]
    unexpected = [key for key in weights if key not in expected]
    wrong_shape = [
        f"{key} expected {list(shape)} found {list(weights[key].shape)}"
        for key, shape in expected.items()
        if key in weights and tuple(weights[key].shape) != shape
    ]
    problems = [
        f"{label} ({len(keys)}): {_key_list(keys)}"
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong_shape))
        if keys
    ]
    if problems:
        raise AsdError(
            f"{source}: weights do not match the BEATs architecture of its own cfg; " + "; ".join(problems)
            + f". Use {EXPECTED_CHECKPOINT}, unmodified."
        )
    # Every block refers to the one shared bias table; make all copies the layer-0 table the reference uses.
    for index in range(1, num_layers):
        weights[_SHARED_BIAS_KEY.format(index)] = weights[_SHARED_BIAS_KEY.format(0)]
    return config, weights


def load_beats(
    path: str | Path | None = None,
    num_layers: int | None = None,
    config: BEATsConfig | Mapping[str, Any] | None = None,
) -> BEATs:
    """Checkpoint file -> BEATs in eval mode (strictly loaded); ``path=None`` -> random init from ``config`` (default ITER3)."""
    if path is None:
        config = ITER3 if config is None else config
        config = config if isinstance(config, BEATsConfig) else BEATsConfig.from_dict(config)
        return BEATs(config, num_layers=num_layers).eval()
    if config is not None:
        raise AsdError(f"{path}: the architecture comes from the checkpoint's own cfg; do not also pass a config.")
    if not Path(path).is_file():
        raise AsdError(f"BEATs checkpoint {path} not found (no such file); download {EXPECTED_CHECKPOINT} and point to it.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several unrelated types for corrupt / foreign files
        detail = str(error).strip().split("\n", 1)[0].split(". ", 1)[0][:200]  # first sentence is enough
        raise AsdError(
            f"{path} is not a readable torch checkpoint ({type(error).__name__}: {detail}); "
            f"it may be truncated or another file type: re-download {EXPECTED_CHECKPOINT}."
        ) from error
    config, weights = adapt_checkpoint(state, num_layers=num_layers, source=str(path))
    model = BEATs(config, num_layers=num_layers)
    model.load_state_dict(weights, strict=True)
    model.random_init = False
    return model.eval()
