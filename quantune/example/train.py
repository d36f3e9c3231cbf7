"""Train the bundled example (``python -m quantune.example.train``).

Data: scikit-learn's handwritten digits (1,797 8x8 images, 10 classes; BSD licence),
needed only to re-train. Writes ``digits_data.npz`` (images as uint8 0-16, labels, the
train / calibration / validation split) and ``digits_cnn.pt`` (the state dict) beside
this file. Deterministic under its seed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn

from quantune.example.model import DigitsCNN

HERE = Path(__file__).resolve().parent
N_VAL = 500
N_CALIB = 256


def make_split(seed: int) -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.uint8)  # values 0..16
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    val_idx, train_idx = order[:N_VAL], order[N_VAL:]
    calib_idx = np.sort(np.random.default_rng(seed + 1).choice(train_idx, N_CALIB, replace=False))
    return {
        "images": images,
        "labels": labels,
        "train_idx": np.sort(train_idx),
        "calib_idx": calib_idx,
        "val_idx": np.sort(val_idx),
    }


def train(seed: int = 0, epochs: int = 60, out_dir: Path = HERE) -> float:
    """Train, save the weights and the split, and return the validation accuracy."""
    torch.manual_seed(seed)
    split = make_split(seed)
    x = torch.from_numpy(split["images"]).float().unsqueeze(1) / 16.0
    y = torch.from_numpy(split["labels"])
    tr, va = torch.from_numpy(split["train_idx"]), torch.from_numpy(split["val_idx"])
    model = DigitsCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in tr[torch.randperm(len(tr), generator=gen)].split(64):
            xb = x[idx]
            # Light augmentation: shift by up to one pixel.
            dx, dy = torch.randint(-1, 2, (2,), generator=gen).tolist()
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            opt.zero_grad()
            loss_fn(model(xb), y[idx]).backward()
            opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(x[va]).argmax(1) == y[va]).float().mean())
    np.savez_compressed(out_dir / "digits_data.npz", **split)
    torch.save(model.state_dict(), out_dir / "digits_cnn.pt")
    return acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args()
    acc = train(args.seed, args.epochs)
    print(f"validation accuracy: {acc:.4f}")


if __name__ == "__main__":
    main()
