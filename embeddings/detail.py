"""Detail features: what the authenticity head reads, pooled from several depths of the tower in the same forward pass
that makes the retrieval vector.

A fake and the real product share shape and colourway, so the retrieval vector (the last layer, pooled) mostly says
*which* product a photo shows. Stitching, logo print and material texture live in the middle of the network. Each
chosen feature map is mean- and GeM-pooled and each pooled part is L2-normalised on its own, so that no depth
dominates by scale; the parts are concatenated (EfficientNet-Lite0: 744 channels of blocks 3-7 plus 1,280 of the head,
twice, 4,048 values).

`DetailTower` wraps a vision tower and returns `(embedding, detail)`; the ONNX export keeps both outputs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# Bumped whenever the pooled layout changes, so stored detail features of an older layout are recomputed.
DETAIL_LAYOUT_VERSION = 1
GEM_P = 3.0
GEM_EPS = 1e-6
EFFICIENTNET_BLOCKS = (2, 3, 4, 5, 6)  # timm's blocks[2:] (40..320 channels); blocks 0-1 are edges and colour
VIT_BLOCKS = 4  # the last four transformer blocks


def _pool(feature_map: torch.Tensor) -> list[torch.Tensor]:
    """Mean- and GeM-pooled, each L2-normalised: two (n, c) parts of an (n, c, h, w) map."""
    x = feature_map.float()
    mean = x.mean(dim=(2, 3))
    gem = x.clamp(min=GEM_EPS).pow(GEM_P).mean(dim=(2, 3)).pow(1.0 / GEM_P)
    return [nn.functional.normalize(mean, dim=1), nn.functional.normalize(gem, dim=1)]


def _is_timm_efficientnet(trunk: Any) -> bool:
    return all(hasattr(trunk, name) for name in ("conv_stem", "bn1", "blocks", "conv_head", "bn2", "forward_head"))


class DetailTower(nn.Module):
    """The tower's own output (the retrieval embedding) and the detail features, from one forward pass.

    Towers it does not know (none here) fall back to the embedding itself as the detail feature: the head still works,
    on less information.
    """

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual
        trunk = getattr(visual, "trunk", None)
        if trunk is not None and _is_timm_efficientnet(trunk):
            self.kind = "efficientnet"
        elif hasattr(visual, "forward_intermediates") and hasattr(visual, "transformer"):
            self.kind = "vit"
        else:
            self.kind = "embedding"

    @property
    def layout(self) -> str:
        """Names the pooling recipe; stored with each detail vector."""
        return f"{self.kind}-v{DETAIL_LAYOUT_VERSION}"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kind == "efficientnet":
            return self._efficientnet(x)
        if self.kind == "vit":
            return self._vit(x)
        embedding: torch.Tensor = self.visual(x)
        return embedding, nn.functional.normalize(embedding.float(), dim=1)

    def _efficientnet(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        visual: Any = self.visual
        trunk: Any = visual.trunk
        x = trunk.bn1(trunk.conv_stem(x))
        parts: list[torch.Tensor] = []
        for number, block in enumerate(trunk.blocks):
            x = block(x)
            if number in EFFICIENTNET_BLOCKS:
                parts.extend(_pool(x))
        x = trunk.bn2(trunk.conv_head(x))
        parts.extend(_pool(x))
        embedding: torch.Tensor = visual.head(trunk.forward_head(x))
        return embedding, torch.cat(parts, dim=1)

    def _vit(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        visual: Any = self.visual
        layers = len(visual.transformer.resblocks)
        out = visual.forward_intermediates(x, indices=min(VIT_BLOCKS, layers), normalize_intermediates=True, output_fmt="NCHW")
        parts = [part for feature_map in out["image_intermediates"] for part in _pool(feature_map)]
        embedding: torch.Tensor = out["image_features"]
        parts.append(nn.functional.normalize(embedding.float(), dim=1))
        return embedding, torch.cat(parts, dim=1)
