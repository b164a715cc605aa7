"""Which weights of a vision tower train: its last blocks (stages) and what follows them; BatchNorm handling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

# Parameters of an open_clip VisionTransformer that come after its residual blocks.
_VIT_HEAD = ("ln_post.", "proj", "attn_pool", "ln_post", "head.")


class UnsupportedModel(ValueError):
    """The tower's block layout is unknown, so only `unfreeze="all"` can be used."""


@dataclass(frozen=True)
class Layout:
    """Parameter-name prefixes of the tower's repeated blocks (input to output) and of the layers after them."""

    blocks: list[str]
    head: tuple[str, ...]


def layout(visual: nn.Module) -> Layout:
    """The block layout of an open_clip vision tower: timm trunks (EfficientNet, ConvNeXt, ResNet, ViT), open_clip
    VisionTransformer and ModifiedResNet."""
    trunk = getattr(visual, "trunk", None)
    if isinstance(trunk, nn.Module):
        names = [name for name, _ in trunk.named_children()]
        for candidate in ("blocks", "stages", "layers"):
            container = getattr(trunk, candidate, None)
            if candidate in names and isinstance(container, nn.Module) and len(list(container.children())) > 0:
                blocks = [f"trunk.{candidate}.{child}." for child, _ in container.named_children()]
                after = names[names.index(candidate) + 1 :]
                return Layout(blocks, (*(f"trunk.{name}." for name in after), "head."))
        if "layer4" in names:
            layers = [name for name in names if name.startswith("layer")]
            after = names[names.index(layers[-1]) + 1 :]
            return Layout([f"trunk.{name}." for name in layers], (*(f"trunk.{name}." for name in after), "head."))
    transformer = getattr(visual, "transformer", None)
    resblocks = getattr(transformer, "resblocks", None)
    if isinstance(resblocks, nn.ModuleList):
        return Layout([f"transformer.resblocks.{i}." for i in range(len(resblocks))], _VIT_HEAD)
    if all(isinstance(getattr(visual, f"layer{i}", None), nn.Module) for i in range(1, 5)):
        return Layout([f"layer{i}." for i in range(1, 5)], ("attnpool.",))
    raise UnsupportedModel(f"unknown block layout for {type(visual).__name__}: use unfreeze='all'")


def trainable_prefixes(visual: nn.Module, unfreeze: int | Literal["all"]) -> tuple[str, ...] | None:
    """Name prefixes of the parameters that train (None: all of them)."""
    if unfreeze == "all":
        return None
    plan = layout(visual)
    if unfreeze > len(plan.blocks):
        raise ValueError(f"unfreeze={unfreeze} but the model has {len(plan.blocks)} blocks; use at most that, or 'all'")
    return (*plan.blocks[len(plan.blocks) - unfreeze :], *plan.head)


def apply_unfreeze(visual: nn.Module, unfreeze: int | Literal["all"]) -> list[nn.Parameter]:
    """Set requires_grad on `visual`'s parameters and return the trainable ones (in a stable order)."""
    prefixes = trainable_prefixes(visual, unfreeze)
    trainable = []
    for name, parameter in visual.named_parameters():
        wanted = prefixes is None or name.startswith(prefixes)
        parameter.requires_grad_(wanted)
        if wanted:
            trainable.append(parameter)
    if not trainable:
        raise ValueError(f"unfreeze={unfreeze} leaves nothing to train")
    return trainable


def set_train_mode(visual: nn.Module, unfreeze: int | Literal["all"], bn: Literal["frozen", "train"]) -> None:
    """Put `visual` in training mode, except BatchNorm layers that must keep their running statistics.

    Frozen layers' BatchNorm always stays in eval mode (their statistics belong to their frozen weights); with
    `bn="frozen"` every BatchNorm does, which suits small class-balanced batches whose statistics are far from those
    of the photos served.
    """
    visual.train()
    prefixes = trainable_prefixes(visual, unfreeze)
    for name, module in visual.named_modules():
        if not isinstance(module, nn.modules.batchnorm._BatchNorm):
            continue
        frozen_layer = prefixes is not None and not f"{name}.".startswith(prefixes)
        if bn == "frozen" or frozen_layer:
            module.eval()
