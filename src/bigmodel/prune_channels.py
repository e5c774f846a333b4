"""Structured (channel) pruning for `bigmodel prune structured=true`.

Zeroed single weights do not make a dense convolution faster; removed channels do. Each convolution
loses the same share of its output channels, those of smallest L1 norm (`ln_structured`). In the
CNN a BatchNorm follows every convolution and undoes the kernel's scale, so the norm is taken of the
kernel folded with its BatchNorm scale (gamma / sqrt(var + eps)): the filter the output really sees.
A pruned channel also gets its BatchNorm scale and shift zeroed, so it outputs exactly 0 after GELU
(not a constant the next layer would read); removing it then changes no output, and `shrink=true`
rebuilds the CNN with the narrower layers (the next convolution's and the head's inputs cut to
match) and writes the new widths into the model config, so the checkpoint rebuilds the small model.

Other models (TextCNN, the classifiers' and the GPT's linear layers) get the same per-layer row
pruning as masks only: their convolutions' channels and linear rows (not the classifier head) are
zeroed, the shapes stay.
"""

from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from bigmodel.checkpoint import CheckpointError
from bigmodel.finetune import head_keys
from bigmodel.models.cnn import CNN
from bigmodel.restore import build_saved


def conv_norm_pairs(model: Any) -> list[tuple[str, Any, str, Any]]:
    """Each convolution of the CNN with the BatchNorm after it, in order (stem, then conv1, conv2 per block)."""
    pairs = [("stem.0", model.stem[0], "stem.1", model.stem[1])]
    for i, block in enumerate(model.blocks):
        pairs += [
            (f"blocks.{i}.conv1", block.conv1, f"blocks.{i}.norm1", block.norm1),
            (f"blocks.{i}.conv2", block.conv2, f"blocks.{i}.norm2", block.norm2),
        ]
    return pairs


@torch.no_grad()
def kill_channels(conv: Any, norm: Any, amount: float) -> torch.Tensor:
    """Zero the `amount` share of `conv`'s output channels with the smallest BN-folded L1 norm, and
    their BatchNorm scale and shift; returns the kept channels as a bool mask (out_channels,)."""
    scale = (norm.weight / (norm.running_var + norm.eps).sqrt()).abs()
    folded = conv.weight * scale.view(-1, *[1] * (conv.weight.dim() - 1))
    torch_prune.ln_structured(conv, "weight", amount=amount, n=1, dim=0, importance_scores=folded)
    keep = conv.weight_mask.flatten(1).any(1)
    torch_prune.remove(conv, "weight")
    norm.weight.mul_(keep)
    norm.bias.mul_(keep)
    return keep


@torch.no_grad()
def shrink_cnn(
    model: Any, keeps: list[torch.Tensor], model_config: dict[str, Any], model_args: dict[str, Any]
) -> tuple[nn.Module, dict[str, Any]]:
    """The CNN without its pruned channels (same outputs), and its model config with the new widths."""
    widths = [int(k.sum()) for k in keeps]  # stem, then conv1 and conv2 of each block (equal: same share pruned)
    config = {**model_config, "stem_width": widths[0], "widths": widths[1::2]}
    small: Any = build_saved(config, "config.model", "the checkpoint", **model_args)
    prev = torch.ones(model.stem[0].in_channels, dtype=torch.bool)
    for (_, conv, _, norm), (_, sconv, _, snorm), keep in zip(conv_norm_pairs(model), conv_norm_pairs(small), keeps):
        sconv.weight.copy_(conv.weight[keep][:, prev])
        if conv.bias is not None:
            sconv.bias.copy_(conv.bias[keep])
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(snorm, name).copy_(getattr(norm, name)[keep])
        snorm.num_batches_tracked.copy_(norm.num_batches_tracked)
        prev = keep
    small.head.weight.copy_(model.head.weight[:, prev])
    if model.head.bias is not None:
        small.head.bias.copy_(model.head.bias)
    return small.eval(), config


def prune_rows(model: nn.Module, amount: float, model_args: dict[str, Any]) -> list[str]:
    """Masks only: output channels of every convolution and rows of every linear layer but the head."""
    head = {k.rsplit(".", 1)[0] for k in head_keys(model, model_args.get("num_classes"))}
    names = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)) and name not in head:
            torch_prune.ln_structured(module, "weight", amount=amount, n=1, dim=0)
            torch_prune.remove(module, "weight")
            names.append(f"{name}.weight")
    if not names:
        raise CheckpointError(
            f"structured=true: {type(model).__name__} has no convolution or linear layer "
            "(besides its head) whose channels could be pruned"
        )
    return names


def prune_channels(
    model: nn.Module, amount: float, model_config: dict[str, Any], model_args: dict[str, Any], shrink: bool
) -> tuple[nn.Module, list[str], dict[str, Any], list[str]]:
    """(the pruned model, the tensors to keep at zero, its model config, lines to print)."""
    if not isinstance(model, CNN):
        names = prune_rows(model, amount, model_args)
        note = [f"{type(model).__name__}: channels zeroed in place (masks); only the CNN's are removed (shrink)"]
        return model, names, model_config, note if shrink else []
    pairs = conv_norm_pairs(model)
    keeps = [kill_channels(conv, norm, amount) for _, conv, _, norm in pairs]
    lines = [f"{'layer':<20} {'channels':>12}"]
    lines += [f"{name:<20} {k.numel():>5} -> {int(k.sum()):<4}" for (name, _, _, _), k in zip(pairs, keeps)]
    if not shrink:  # the masked model: its dead channels' kernels and BatchNorm scale/shift stay zero
        names = [
            n for name, _, norm_name, _ in pairs for n in (f"{name}.weight", f"{norm_name}.weight", f"{norm_name}.bias")
        ]
        return model, names, model_config, lines
    small, config = shrink_cnn(model, keeps, model_config, model_args)
    return small, [], config, lines
