"""The scikit-learn handwritten digits (8x8, shipped with scikit-learn): a fixed split, resized tensors, subsets."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

DIGITS_VAL_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
DIGITS_CLASSES = [str(d) for d in range(10)]


class ShiftedImages(Dataset):
    """One-channel images in [-1, 1] repeated to ``in_chans`` channels, with labels; training images get a
    random shift of up to ``shift`` pixels."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, in_chans: int, train: bool, shift: int):
        self.images = images.float().expand(-1, in_chans, -1, -1).contiguous()
        self.targets = targets.long().tolist()
        self.train = train
        self.shift = shift

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        x = self.images[i]
        if self.train:
            dx, dy = torch.randint(-self.shift, self.shift + 1, (2,)).tolist()
            x = torch.roll(x, shifts=(dy, dx), dims=(1, 2))
        return x, self.targets[i]


class DigitsDataset(ShiftedImages):
    """The 8x8 scikit-learn digits, scaled to [-1, 1] and resized to `img_size`, one channel.

    Training images get a random shift of up to one original pixel.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, img_size: int, in_chans: int, train: bool):
        x = images.float().view(-1, 1, 8, 8) / 8.0 - 1.0
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
        super().__init__(x, targets, in_chans, train, shift=max(1, img_size // 8))


def digits_split():
    """The fixed, class-balanced train/val split of the digits: ((X, y) train, (X, y) val)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    Xtr, Xva, ytr, yva = train_test_split(
        X, y, test_size=DIGITS_VAL_FRACTION, stratify=y, random_state=DIGITS_SPLIT_SEED
    )
    return (torch.from_numpy(Xtr), torch.from_numpy(ytr)), (torch.from_numpy(Xva), torch.from_numpy(yva))


def digits_subset(X: torch.Tensor, y: torch.Tensor, classes: list[int]):
    """The digits in ``classes``, relabelled 0..k-1 in the order given."""
    keep = torch.isin(y, torch.tensor(classes, dtype=y.dtype))
    relabel = {d: i for i, d in enumerate(classes)}
    return X[keep], torch.tensor([relabel[int(v)] for v in y[keep]], dtype=torch.long)
