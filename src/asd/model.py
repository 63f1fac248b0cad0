"""The trained part of the system: LoRA on BEATs, attentive statistics pooling, projection, ArcFace.

``ASDModel`` wraps a frozen BEATs backbone (only LoRA adapters on q_proj/v_proj of the chosen
blocks train), pools the 4th block's token features with ECAPA-style attentive statistics, projects
them to a 128-d embedding and classifies it with (sub-centre) ArcFace. The checkpoint of one epoch
holds only the trained tensors plus everything needed to rebuild the model (``checkpoint_dict``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import pandas as pd
import torch
import torch.nn.functional as F
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from asd.beats import BEATs

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


class AttentiveStatsPooling(nn.Module):
    """ECAPA-TDNN attentive statistics pooling: per-channel attention over time, weighted mean ‖ std."""

    def __init__(self, *, dim: int, bottleneck: int = 128):
        super().__init__()
        self.attention = nn.Sequential(nn.Linear(dim, bottleneck), nn.Tanh(), nn.Linear(bottleneck, dim))

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        # x: [B, T, D]; padding_mask: [B, T] True = padded token
        scores = self.attention(x).float()  # [B, T, D]
        if padding_mask is not None:
            scores = scores.masked_fill(padding_mask[:, :, None], float("-inf"))
        weights = scores.softmax(dim=1)  # [B, T, D], sums to 1 over valid tokens
        x = x.float()
        mean = (weights * x).sum(dim=1)  # [B, D]
        var = (weights * x.square()).sum(dim=1) - mean.square()
        std = var.clamp_min(1e-6).sqrt()
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
        """[B, E] -> [B, C]: cosine to the nearest valid centre of each class."""
        centres = F.normalize(self.weight.float(), dim=-1)  # [C, K, E]
        cos = torch.einsum("be,cke->bck", F.normalize(embedding.float(), dim=-1), centres)  # [B, C, K]
        return cos.masked_fill(~self.centre_mask, -2.0).amax(dim=-1)  # [B, C]

    def forward(self, embedding: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (loss, margin-free logits [B, C]) for labels [B]."""
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


def lora_target_pattern(blocks: list[int]) -> str:
    """peft regex matching q_proj and v_proj of the given encoder blocks only."""
    return rf"encoder\.layers\.({'|'.join(str(b) for b in blocks)})\.self_attn\.(q_proj|v_proj)"


class ASDModel(nn.Module):
    def __init__(self, backbone: BEATs, *, head: HeadConfig, subcenters: list[int]):
        super().__init__()
        missing = [b for b in head.lora_blocks if b >= backbone.num_layers]
        if missing:
            raise ValueError(f"model.lora_blocks {missing} do not exist in a {backbone.num_layers}-block backbone")
        lora = LoraConfig(r=head.lora_rank, lora_alpha=head.lora_alpha, lora_dropout=head.lora_dropout,
                          target_modules=lora_target_pattern(head.lora_blocks), bias="none")
        self.backbone = inject_adapter_in_model(lora, backbone)
        for name, param in self.backbone.named_parameters():
            param.requires_grad = "lora_" in name  # everything but the adapters stays frozen
        dim = backbone.config.encoder_embed_dim
        self.pooling = AttentiveStatsPooling(dim=dim)
        self.projection = nn.Sequential(nn.Linear(2 * dim, 2 * head.embedding_dim), nn.GELU(),
                                        nn.Linear(2 * head.embedding_dim, head.embedding_dim))
        self.arcface = ArcFace(embedding_dim=head.embedding_dim, subcenters=subcenters,
                               scale=head.arcface_scale, margin=head.arcface_margin)

    def embed(self, fbank: torch.Tensor, frame_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, frames, 128] normalised fbank -> [B, E] embedding (float32)."""
        tokens, token_mask = self.backbone.forward_fbank(fbank, frame_padding_mask)  # [B, T, D], [B, T]
        return self.projection(self.pooling(tokens, token_mask)).float()

    def forward(self, fbank, frame_padding_mask, labels):
        return self.arcface(self.embed(fbank, frame_padding_mask), labels)

    def trained_state(self) -> dict[str, torch.Tensor]:
        """Only the tensors training changes: LoRA adapters, pooling, projection, ArcFace centres."""
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        return {k: v.detach().cpu().clone() for k, v in self.state_dict().items()
                if k in trainable or not k.startswith("backbone.")}

    def load_trained_state(self, state: dict[str, torch.Tensor]) -> None:
        expected = self.trained_state().keys()
        if set(state) != set(expected):
            raise KeyError(f"trained-state keys differ: missing {sorted(set(expected) - set(state))[:3]}, "
                           f"unexpected {sorted(set(state) - set(expected))[:3]}")
        self.load_state_dict(state, strict=False)


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
    from asd import beats
    from asd.fingerprint import file_sha256

    path, num_layers = settings.get("checkpoint"), settings["num_layers"]
    if path:
        model = beats.load_beats(path, num_layers=num_layers)
        identity = {"checkpoint": str(path), "sha256": file_sha256(path), "random_init": False}
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
    """How outputs name the backbone; a random one always says so."""
    return "random-init backbone (no pre-trained weights)" if identity["random_init"] else \
        f"BEATs checkpoint {identity['checkpoint']} (sha256 {identity['sha256'][:12]})"


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
    """Load an epoch checkpoint's trained tensors into a model built for the same run."""
    from asd.errors import AsdError

    try:
        model.load_trained_state(ckpt["state"])
    except (KeyError, RuntimeError) as err:
        raise AsdError(f"checkpoint {path} does not fit the model ({err}); {_checkpoint_rule(path)}.") from None


def load_epoch_checkpoint(path, *, backbone_settings: dict, device: str | torch.device = "cpu") -> tuple[ASDModel, dict]:
    """Rebuild the model of an epoch checkpoint on top of the configured backbone (identity checked)."""
    from asd.errors import AsdError

    ckpt = read_epoch_checkpoint(path)
    backbone, identity = build_backbone(backbone_settings)
    if identity["sha256"] != ckpt["backbone"]["sha256"] or identity["num_layers"] != ckpt["backbone"]["num_layers"]:
        raise AsdError(f"checkpoint {path} was trained on backbone {backbone_label(ckpt['backbone'])} with "
                       f"{ckpt['backbone']['num_layers']} blocks, but the config now gives "
                       f"{backbone_label(identity)} with {identity['num_layers']}; restore the config or "
                       f"{_checkpoint_rule(path)}.")
    model = ASDModel(backbone, head=HeadConfig.from_dict(ckpt["head"]), subcenters=ckpt["subcenters"])
    load_trained_epoch(model, path, ckpt)
    return model.to(device).eval(), ckpt
