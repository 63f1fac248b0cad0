"""The trained part of the system: LoRA on BEATs, attentive statistics pooling, projection, ArcFace.

``ASDModel`` wraps a frozen BEATs backbone (only LoRA adapters on q_proj/v_proj of the chosen
blocks train), pools the 4th block's token features with ECAPA-style attentive statistics, projects
them to a 128-d embedding and classifies it with (sub-centre) ArcFace. The checkpoint of one epoch
holds only the trained tensors plus everything needed to rebuild the model (``checkpoint_dict``).

Only the backbone follows the caller's autocast (bf16 / fp16): the head (pooling, projection,
ArcFace) always runs in float32 with autocast switched off, so the stored embeddings (the KNN's
cosine distances), the ArcFace cosines and their clamp below 1 are float32 whatever the precision.

Training injects the adapters with peft (imported only then: it pulls in transformers, seconds of
import time). Inference never imports it: ``load_epoch_checkpoint`` builds the model with
``merge_lora=True``, a plain backbone onto which ``merge_lora_into_backbone`` folds each epoch's
adapters (W0 + lora_alpha / r * B @ A), the same function as peft's eval-mode forward.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from asd.model.beats import BEATs

CHECKPOINT_FORMAT = "asd-epoch-checkpoint-v1"


@dataclass
class HeadConfig:
    lora_rank: int = 64
    lora_alpha: float = 64.0
    lora_dropout: float = 0.0
    lora_blocks: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    embedding_dim: int = 128
    arcface_scale: float = 30.0
    arcface_margin: float = 0.2
    arcface_subcenters: int = 16
    pooling_global_context: bool = True  # ECAPA: utterance mean and std appended to each frame's attention input

    @classmethod
    def from_dict(cls, values: dict) -> "HeadConfig":
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})


NO_ATTRIBUTE = "noAttribute"


def class_names(manifest: pd.DataFrame) -> list[str]:
    """ArcFace class of each clip: (machine, attribute string); hidden attributes: (machine, domain)."""
    hidden = manifest["attributes"].isin([NO_ATTRIBUTE, ""])
    suffix = manifest["attributes"].where(~hidden, manifest["domain"])
    return list(manifest["machine"] + "/" + suffix)


def label_map(manifest: pd.DataFrame) -> tuple[list[str], list[int]]:
    """Sorted class names and, per class, whether it is a hidden-attribute (sub-centre) class (1) or not (0)."""
    names = class_names(manifest)
    hidden = manifest["attributes"].isin([NO_ATTRIBUTE, ""]).tolist()
    classes = sorted(set(names))
    is_hidden = {name: int(h) for name, h in zip(names, hidden)}
    return classes, [is_hidden[c] for c in classes]


def float32_region(tensor: torch.Tensor):
    """Context in which ops on ``tensor``'s device run in their inputs' dtype: autocast switched off.

    Inside an autocast region a ``.float()`` alone does not help: the next matmul or Linear casts
    back to bf16 / fp16. The head (pooling, projection, ArcFace) runs in here on float32 inputs.
    """
    return torch.autocast(device_type=tensor.device.type, enabled=False)


def weighted_mean_std(x: torch.Tensor, weights: torch.Tensor, *, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean and std over dim 1 of x [B, T, D] with weights [B, T, D or 1] summing to 1 over T.

    The variance is sum_t w_t (x_t - mu)^2, not E[x^2] - mu^2, which cancels catastrophically when
    the mean is large against the spread; it is clamped to ``eps`` before the square root.
    """
    mean = (weights * x).sum(dim=1)  # [B, D]
    var = (weights * (x - mean[:, None]).square()).sum(dim=1)
    return mean, var.clamp_min(eps).sqrt()


class AttentiveStatsPooling(nn.Module):
    """ECAPA-TDNN attentive statistics pooling: per-channel attention over time, weighted mean ‖ std.

    With ``global_context`` (ECAPA-TDNN, Desplanques et al. 2020) each frame's attention input is
    [h_t ; mean(h) ; std(h)], the mean and std taken over the clip's valid frames; without it, h_t
    alone. The attention maps it to a bottleneck (tanh) and back to one score per channel; a softmax
    over the valid frames of each channel gives the weights of the weighted mean and std.
    Padded tokens (``padding_mask`` True) get no weight anywhere and their values never matter.
    Runs in the module's dtype (float32) with autocast off, whatever the caller's autocast.
    """

    def __init__(self, *, dim: int, bottleneck: int = 128, global_context: bool = True, eps: float = 1e-6):
        super().__init__()
        self.global_context, self.eps = global_context, eps
        in_dim = 3 * dim if global_context else dim
        self.attention = nn.Sequential(nn.Linear(in_dim, bottleneck), nn.Tanh(), nn.Linear(bottleneck, dim))

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        # x: [B, T, D]; padding_mask: [B, T] True = padded token
        with float32_region(x):
            x = x.to(self.attention[0].weight.dtype)
            if padding_mask is not None:
                pad = padding_mask[:, :, None]  # [B, T, 1]
                x = x.masked_fill(pad, 0.0)  # padded values (garbage, even inf / nan) never reach a sum
            attention_input = x
            if self.global_context:
                valid = torch.ones_like(x[:, :, :1]) if padding_mask is None else (~pad).to(x.dtype)
                uniform = valid / valid.sum(dim=1, keepdim=True).clamp_min(1)  # [B, T, 1]
                mean, std = weighted_mean_std(x, uniform, eps=self.eps)  # [B, D] over valid frames
                context = torch.cat([mean, std], dim=-1)[:, None].expand(-1, x.shape[1], -1)  # [B, T, 2D]
                attention_input = torch.cat([x, context], dim=-1)  # [B, T, 3D]
            scores = self.attention(attention_input)  # [B, T, D]
            if padding_mask is not None:
                scores = scores.masked_fill(pad, float("-inf"))
            weights = scores.softmax(dim=1)  # [B, T, D], sums to 1 over valid tokens
            mean, std = weighted_mean_std(x, weights, eps=self.eps)
            return torch.cat([mean, std], dim=-1)  # [B, 2D]


class ArcFace(nn.Module):
    """Additive angular margin softmax with a per-class number of sub-centres (sub-centre ArcFace).

    Centres are stored padded to the largest count; unused centres are masked out of the max.
    """

    def __init__(self, *, embedding_dim: int, subcenters: list[int], scale: float, margin: float):
        super().__init__()
        num_classes, max_centres = len(subcenters), max(subcenters)
        self.weight = nn.Parameter(torch.empty(num_classes, max_centres, embedding_dim))
        nn.init.xavier_uniform_(self.weight.view(-1, embedding_dim))
        self.register_buffer("centre_mask", torch.arange(max_centres)[None, :] < torch.tensor(subcenters)[:, None])
        self.scale, self.margin = scale, margin

    def cosine(self, embedding: torch.Tensor) -> torch.Tensor:
        """[B, E] -> [B, C]: cosine to the nearest valid centre of each class (float32, autocast off)."""
        with float32_region(embedding):
            centres = F.normalize(self.weight.float(), dim=-1)  # [C, K, E]
            cos = torch.einsum("be,cke->bck", F.normalize(embedding.float(), dim=-1), centres)  # [B, C, K]
            return cos.masked_fill(~self.centre_mask, -2.0).amax(dim=-1)  # [B, C]

    def forward(self, embedding: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (loss, margin-free logits [B, C]) for labels [B], both float32."""
        with float32_region(embedding):
            # float32 keeps 1 - 1e-7 below 1 (bf16 would round it to 1: sin = 0, an infinite gradient)
            cos = self.cosine(embedding).clamp(-1 + 1e-7, 1 - 1e-7)
            target_cos = cos.gather(1, labels[:, None])  # [B, 1]
            sin = (1 - target_cos.square()).sqrt()
            with_margin = target_cos * math.cos(self.margin) - sin * math.sin(self.margin)
            # Beyond theta = pi - m, cos(theta + m) would increase again; use the usual linear fallback.
            threshold = math.cos(math.pi - self.margin)
            with_margin = torch.where(target_cos > threshold, with_margin,
                                      target_cos - math.sin(math.pi - self.margin) * self.margin)
            logits = cos.scatter(1, labels[:, None], with_margin)
            return F.cross_entropy(self.scale * logits, labels), self.scale * cos


LORA_TARGETS = ("q_proj", "v_proj")  # the adapted Linears of each chosen block
PEFT_ADAPTER = "default"  # the adapter name peft gives an injected LoRA (part of every checkpoint key)


def lora_target_pattern(blocks: list[int]) -> str:
    """peft regex matching q_proj and v_proj of the given encoder blocks only."""
    return rf"encoder\.layers\.({'|'.join(str(b) for b in blocks)})\.self_attn\.({'|'.join(LORA_TARGETS)})"


def lora_scale(head: HeadConfig) -> float:
    """peft's LoRA scaling for this config: lora_alpha / r (``LoraConfig`` default, no rsLoRA)."""
    return head.lora_alpha / head.lora_rank


def lora_checkpoint_keys(blocks: list[int]) -> Iterator[tuple[str, str, str]]:
    """(backbone module path, checkpoint key of its lora_A, of its lora_B) of every adapted Linear.

    The keys are the ones a peft-injected ``ASDModel`` writes: the module's path under ``backbone.``
    plus ``.lora_A.default.weight`` ([r, in]) and ``.lora_B.default.weight`` ([out, r]).
    """
    for block in blocks:
        for target in LORA_TARGETS:
            module = f"encoder.layers.{block}.self_attn.{target}"
            yield module, *(f"backbone.{module}.lora_{ab}.{PEFT_ADAPTER}.weight" for ab in "AB")


FROZEN_WEIGHT = "lora_frozen_weight"  # non-persistent buffer of an adapted Linear: its backbone weight W0


@torch.no_grad()
def merge_lora_into_backbone(backbone: BEATs, state: Mapping[str, torch.Tensor], *, head: HeadConfig) -> None:
    """Adapt an epoch checkpoint's LoRA tensors onto a plain (peft-free) backbone, in place.

    The one place inference turns LoRA adapters into backbone weights. ``state`` is a checkpoint's
    trained state (``ASDModel.trained_state`` of a peft model; only its LoRA keys are read, see
    ``lora_checkpoint_keys``). Each adapted ``nn.Linear`` (q_proj / v_proj of ``head.lora_blocks``)
    gets ``weight = W0 + (lora_alpha / r) * B @ A``: peft's eval-mode output ``base(x) + scale * B(A(x))``
    (no dropout at eval, bias="none") as one matrix, equal to it within float32 rounding.

    W0 is the Linear's backbone weight, kept on the first merge as a non-persistent buffer
    (``lora_frozen_weight``: not in the state dict, not a parameter, moves with ``.to()``), so every
    later merge (the next epoch) starts again from W0, never from the previous epoch's weight.
    A missing key raises KeyError; a wrong shape raises RuntimeError in ``load_state_dict``'s words.
    """
    scale = lora_scale(head)
    updates = []
    for module_path, key_a, key_b in lora_checkpoint_keys(head.lora_blocks):
        linear = backbone.get_submodule(module_path)
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"{module_path} is a {type(linear).__name__}, not a plain nn.Linear (a peft model?)")
        lora_a, lora_b = state[key_a], state[key_b]
        for key, tensor, shape in ((key_a, lora_a, (head.lora_rank, linear.in_features)),
                                   (key_b, lora_b, (linear.out_features, head.lora_rank))):
            if tuple(tensor.shape) != shape:
                raise RuntimeError(f"size mismatch for {key}: copying a param with shape {tensor.shape} from "
                                   f"checkpoint, the shape in current model is {torch.Size(shape)}.")
        updates.append((linear, lora_a, lora_b))
    for linear, lora_a, lora_b in updates:  # all shapes checked: no half-merged backbone on a bad checkpoint
        if not hasattr(linear, FROZEN_WEIGHT):
            linear.register_buffer(FROZEN_WEIGHT, linear.weight.detach().clone(), persistent=False)
        frozen = getattr(linear, FROZEN_WEIGHT)
        delta = lora_b.to(frozen.device, torch.float32) @ lora_a.to(frozen.device, torch.float32)  # [out, in]
        linear.weight.copy_((frozen.float() + scale * delta).to(linear.weight.dtype))


class ASDModel(nn.Module):
    """Backbone + pooling + projection + ArcFace.

    By default (training) peft injects trainable LoRA adapters into the backbone. With
    ``merge_lora=True`` (inference) the backbone stays a plain, fully frozen BEATs and peft is never
    imported; ``load_trained_state`` then merges a checkpoint's adapters into the adapted Linears
    (``merge_lora_into_backbone``). Such a model computes the same embeddings but cannot save adapters.
    """

    def __init__(self, backbone: BEATs, *, head: HeadConfig, subcenters: list[int], merge_lora: bool = False):
        super().__init__()
        missing = [b for b in head.lora_blocks if b >= backbone.num_layers]
        if missing:
            raise ValueError(f"model.lora_blocks {missing} do not exist in a {backbone.num_layers}-block backbone")
        self.head_config, self.merge_lora = head, merge_lora
        if merge_lora:
            self.backbone = backbone
            for param in self.backbone.parameters():
                param.requires_grad = False
        else:
            from peft import LoraConfig, inject_adapter_in_model  # training only: imports transformers (~4 s)

            lora = LoraConfig(r=head.lora_rank, lora_alpha=head.lora_alpha, lora_dropout=head.lora_dropout,
                              target_modules=lora_target_pattern(head.lora_blocks), bias="none")
            self.backbone = inject_adapter_in_model(lora, backbone)
            for name, param in self.backbone.named_parameters():
                param.requires_grad = "lora_" in name  # everything but the adapters stays frozen
        dim = backbone.config.encoder_embed_dim
        self.pooling = AttentiveStatsPooling(dim=dim, global_context=head.pooling_global_context)
        self.projection = nn.Sequential(nn.Linear(2 * dim, 2 * head.embedding_dim), nn.GELU(),
                                        nn.Linear(2 * head.embedding_dim, head.embedding_dim))
        self.arcface = ArcFace(embedding_dim=head.embedding_dim, subcenters=subcenters,
                               scale=head.arcface_scale, margin=head.arcface_margin)

    def embed(self, fbank: torch.Tensor, frame_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, frames, 128] normalised fbank -> [B, E] embedding (float32).

        The backbone runs under the caller's autocast, if any; the head always in float32.
        """
        tokens, token_mask = self.backbone.forward_fbank(fbank, frame_padding_mask)  # [B, T, D], [B, T]
        return self.pool_and_project(tokens, token_mask)

    def pool_and_project(self, tokens: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Backbone tokens [B, T, D] (any dtype) -> [B, E] embedding: pooling + projection in float32."""
        with float32_region(tokens):
            return self.projection(self.pooling(tokens.float(), token_mask))

    def forward(self, fbank, frame_padding_mask, labels):
        return self.arcface(self.embed(fbank, frame_padding_mask), labels)

    def _trained_keys(self) -> list[str]:
        """State-dict keys of the trained tensors; with merged LoRA, the adapter keys a checkpoint holds."""
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        keys = [k for k in self.state_dict() if k in trainable or not k.startswith("backbone.")]
        if self.merge_lora:
            keys += [key for _, *pair in lora_checkpoint_keys(self.head_config.lora_blocks) for key in pair]
        return keys

    def trained_state(self) -> dict[str, torch.Tensor]:
        """Only the tensors training changes: LoRA adapters, pooling, projection, ArcFace centres."""
        if self.merge_lora:
            raise TypeError("a merged-LoRA (inference) ASDModel holds no adapters to save; "
                            "build it without merge_lora to train and checkpoint")
        state = self.state_dict()
        return {k: state[k].detach().cpu().clone() for k in self._trained_keys()}

    def load_trained_state(self, state: dict[str, torch.Tensor]) -> None:
        expected = self._trained_keys()
        if set(state) != set(expected):
            raise KeyError(f"trained-state keys differ: missing {sorted(set(expected) - set(state))[:3]}, "
                           f"unexpected {sorted(set(state) - set(expected))[:3]}")
        if not self.merge_lora:
            self.load_state_dict(state, strict=False)
            return
        self.load_state_dict({k: v for k, v in state.items() if not k.startswith("backbone.")}, strict=False)
        merge_lora_into_backbone(self.backbone, state, head=self.head_config)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def checkpoint_dict(model: ASDModel, *, epoch: int, head: HeadConfig, backbone: dict, classes: list[str],
                    subcenters: list[int], metrics: dict) -> dict:
    """A self-describing epoch checkpoint: trained tensors + config + label map + backbone identity."""
    return {"format": CHECKPOINT_FORMAT, "epoch": epoch, "head": asdict(head), "backbone": backbone,
            "classes": classes, "subcenters": subcenters, "metrics": metrics, "state": model.trained_state()}


RANDOM_INIT_SEED = 0  # the random-init backbone must be the same in training and embedding jobs


def build_backbone(settings: dict) -> tuple[BEATs, dict]:
    """BEATs from the config's ``backbone`` section, and its identity record for checkpoints.

    With no checkpoint the backbone is randomly initialised from a fixed seed (so every job
    rebuilds the same one) and labelled ``random_init``.
    """
    from asd.model import beats
    from asd.fingerprint import file_sha256

    path, num_layers = settings.get("checkpoint"), settings["num_layers"]
    if path:
        from asd.model.pretrain import read_marker

        model = beats.load_beats(path, num_layers=num_layers)
        identity = {"checkpoint": str(path), "sha256": file_sha256(path), "random_init": False,
                    "pretrained_on": read_marker(path)}
    else:
        config = {"iter3": beats.ITER3, "demo": beats.DEMO}[settings.get("random_init_size", "iter3")]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            model = beats.load_beats(None, num_layers=num_layers, config=config)
        identity = {"checkpoint": None, "sha256": f"random-init:{settings.get('random_init_size')}:seed{RANDOM_INIT_SEED}",
                    "random_init": True}
    identity.update(num_layers=num_layers, config=model.config.to_dict())
    return model, identity


def backbone_label(identity: dict) -> str:
    """How outputs name the backbone: a random one and the demo one (``asd pretrain``) always say so."""
    if identity["random_init"]:
        return "random-init backbone (no pre-trained weights)"
    weights = f"{Path(str(identity['checkpoint'])).name}, sha256 {identity['sha256'][:12]}"
    if identity.get("pretrained_on"):
        return f"{identity['pretrained_on']} ({weights})"
    return f"BEATs checkpoint ({weights})"


def _checkpoint_rule(path) -> str:
    return f"delete it and rerun the 'train' rule for its fold (snakemake --forcerun {path})"


def read_epoch_checkpoint(path) -> dict:
    """An epoch checkpoint's dict; an unreadable or foreign file is refused naming the rule to rerun."""
    from asd.errors import AsdError

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated / foreign files
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""  # torch's full text is a page long
        raise AsdError(f"checkpoint {path} cannot be read ({type(err).__name__}: {reason}); "
                       f"{_checkpoint_rule(path)}.") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise AsdError(f"{path} is not an asd epoch checkpoint (format {CHECKPOINT_FORMAT}); {_checkpoint_rule(path)}.")
    return ckpt


def load_trained_epoch(model: ASDModel, path, ckpt: dict) -> None:
    """Load an epoch checkpoint's trained tensors into a model built for the same run.

    On a ``merge_lora`` model the adapters are merged onto the backbone's own weights, so loading
    one epoch after another never accumulates them.
    """
    from asd.errors import AsdError

    try:
        model.load_trained_state(ckpt["state"])
    except (KeyError, RuntimeError) as err:
        raise AsdError(f"checkpoint {path} does not fit the model ({err}); {_checkpoint_rule(path)}.") from None


def load_epoch_checkpoint(path, *, backbone_settings: dict, device: str | torch.device = "cpu",
                          ckpt: dict | None = None) -> tuple[ASDModel, dict]:
    """Rebuild the model of an epoch checkpoint on top of the configured backbone (identity checked);
    ``ckpt``: the checkpoint at ``path`` if the caller has already read it.

    The model is an inference model (``merge_lora=True``: no peft, adapters merged into the backbone);
    ``load_trained_epoch`` swaps in another epoch of the same run.
    """
    from asd.errors import AsdError

    ckpt = read_epoch_checkpoint(path) if ckpt is None else ckpt
    backbone, identity = build_backbone(backbone_settings)
    if identity["sha256"] != ckpt["backbone"]["sha256"] or identity["num_layers"] != ckpt["backbone"]["num_layers"]:
        raise AsdError(f"checkpoint {path} was trained on backbone {backbone_label(ckpt['backbone'])} with "
                       f"{ckpt['backbone']['num_layers']} blocks, but the config now gives "
                       f"{backbone_label(identity)} with {identity['num_layers']}; restore the config or "
                       f"{_checkpoint_rule(path)}.")
    model = ASDModel(backbone, head=HeadConfig.from_dict(ckpt["head"]), subcenters=ckpt["subcenters"], merge_lora=True)
    load_trained_epoch(model, path, ckpt)
    return model.to(device).eval(), ckpt
