"""Matplotlib figures for TensorBoard's Images tab, rendered to (3, H, W) float tensors in [0, 1].

matplotlib is a core dependency: a confusion matrix without class names, counts and a colour key
cannot be read, and these figures are what a user looks at after every run. It is imported
here only, when a figure is drawn, so commands that draw none do not pay for the import.
"""

import logging

import numpy as np
import torch

logging.getLogger("matplotlib").setLevel(logging.WARNING)  # its font-cache lines are noise in train.log


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)  # no display: render into memory
    import matplotlib.pyplot as plt

    return plt


def to_tensor(fig) -> torch.Tensor:
    """The figure's pixels as a (3, H, W) float tensor; the figure is closed."""
    plt = _pyplot()
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    plt.close(fig)
    return torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1).float() / 255


def confusion_figure(confusion: torch.Tensor, class_names: list[str], title: str = "") -> torch.Tensor:
    """Rows: true class, columns: predicted. Each cell shows its count and its share of the row
    (row-normalized %, the recall of the diagonal); colour is that share, with a colour bar."""
    plt = _pyplot()
    cm = confusion.double()
    n = cm.shape[0]
    frac = (cm / cm.sum(1, keepdim=True).clamp(min=1)).numpy()
    names = [name if len(name) <= 14 else name[:13] + "…" for name in class_names]
    side = min(max(3.6, 0.5 * n + 2.2), 12.0)  # inches: 10 classes fit a TensorBoard card at actual size
    fig, ax = plt.subplots(figsize=(side + 1.4, side), dpi=90)
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(range(n), names, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    if n <= 30:  # beyond that the numbers would not fit their cells
        font = 11 if n <= 4 else 8 if n <= 12 else 6
        for i in range(n):
            for j in range(n):
                colour = "white" if frac[i, j] > 0.55 else "black"
                ax.text(
                    j,
                    i,
                    f"{int(cm[i, j])}\n{100 * frac[i, j]:.0f}%",
                    ha="center",
                    va="center",
                    color=colour,
                    fontsize=font,
                )
    fig.tight_layout()
    return to_tensor(fig)


def prediction_grid(images: torch.Tensor, true: list[str], pred: list[str], columns: int = 8) -> torch.Tensor:
    """Images (N, C, H, W) in [0, 1], each titled with its predicted class over its true one;
    green when right, red when wrong."""
    plt = _pyplot()
    count = images.shape[0]
    rows = (count + columns - 1) // columns
    # 8 columns fit a TensorBoard card at actual size (about 940 pixels)
    fig, axes = plt.subplots(rows, columns, figsize=(1.3 * columns, 1.6 * rows), dpi=90, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= count:
            continue
        img = images[k].permute(1, 2, 0).clamp(0, 1).numpy()
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
        right = pred[k] == true[k]
        ax.set_title(f"{pred[k][:12]}\n(true: {true[k][:12]})", fontsize=8, color="green" if right else "red")
    fig.tight_layout()
    return to_tensor(fig)
