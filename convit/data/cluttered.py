"""Cluttered digits: each scikit-learn digit at a random place on a larger canvas, among fragments of others.

The 8x8 digits fill their whole image, so a model never has to find where the digit is. Here each digit,
upsampled 2x as the digits task feeds it (16x16, bilinear), is pasted at a random position on an empty
32x32 or 48x48 canvas (64 or 144 patches at patch 4), and ``distractors`` fragments (8x8 crops, a quarter
of a digit's area, cut from other source digits) are pasted where they do not overlap it. The label is the
whole digit's class. Pixels lie in [-1, 1] (-1 = empty), composited with a maximum, as the digits' scaling.

Generation is seeded and in memory (about a second). The train and validation canvases come from disjoint
source digits: the fixed, class-balanced split of the digits task (80/20, seed 0); each split's fragments
come only from its own digits. The validation set holds ``val_copies`` canvases per validation digit.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from .digits import ShiftedImages

CANVAS_SIZES = (32, 48)
DIGIT_SIZE = 16  # the 8x8 digits upsampled 2x, as the digits task feeds them at its 16x16 size
FRAGMENT_SIZE = 8
SHIFT = 2  # training shift in pixels (one source pixel); digits are placed at least this far from the edges
VAL_FRACTION = 0.2  # the digits task's split: class-balanced, seed 0
SPLIT_SEED = 0
GENERATION_SEED = 0
VAL_COPIES = 3
CLASSES = [str(d) for d in range(10)]


class ClutteredError(UserError):
    """A cluttered-digits setting the generator cannot make (canvas size, number of distractors)."""


def default_distractors(canvas: int) -> int:
    """Distractors per canvas: 4 on 32x32, scaled with the area (9 on 48x48)."""
    return round(4 * (canvas / 32) ** 2)


def source_split():
    """The digits' fixed class-balanced split: ((X, y) train, (X, y) val), X as (N, 64) values 0..16."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    Xtr, Xva, ytr, yva = train_test_split(X, y, test_size=VAL_FRACTION, stratify=y, random_state=SPLIT_SEED)
    return (Xtr, ytr), (Xva, yva)


def upsample(X: np.ndarray) -> np.ndarray:
    """(N, 64) digits with values 0..16 as (N, 16, 16) intensities in [0, 1] (bilinear, as the digits task)."""
    x = torch.from_numpy(np.asarray(X, dtype=np.float32)).view(-1, 1, 8, 8) / 16.0
    x = F.interpolate(x, size=(DIGIT_SIZE, DIGIT_SIZE), mode="bilinear", align_corners=False)
    return x[:, 0].clamp(0, 1).numpy()


def _fragment(digit: np.ndarray, rng: np.random.Generator, tries: int = 8) -> np.ndarray:
    """The inkiest of ``tries`` random 8x8 crops of one upsampled digit."""
    corners = rng.integers(0, DIGIT_SIZE - FRAGMENT_SIZE + 1, size=(tries, 2))
    crops = [digit[y : y + FRAGMENT_SIZE, x : x + FRAGMENT_SIZE] for y, x in corners]
    return crops[int(np.argmax([c.sum() for c in crops]))]


def compose(digits: np.ndarray, canvas: int, distractors: int, copies: int, rng: np.random.Generator):
    """``copies`` canvases per digit of ``digits`` (N, 16, 16 in [0, 1]), fragments from the other digits.

    Returns (canvases (N * copies, canvas, canvas) in [0, 1], index of each canvas's digit, (top, left) of it).
    """
    n = len(digits)
    if n < 2:
        raise ClutteredError("cluttered digits need at least two source digits (fragments come from the others)")
    span = canvas - DIGIT_SIZE - 2 * SHIFT + 1
    free = canvas - FRAGMENT_SIZE + 1
    out = np.zeros((n * copies, canvas, canvas), dtype=np.float32)
    source = np.repeat(np.arange(n), copies)
    corners = SHIFT + rng.integers(0, span, size=(n * copies, 2))
    grid = np.arange(free)
    for k, (i, (top, left)) in enumerate(zip(source, corners)):
        img = out[k]
        # fragment corners whose 8x8 box misses the digit's 16x16 box
        clear_y = (grid + FRAGMENT_SIZE <= top) | (grid >= top + DIGIT_SIZE)
        clear_x = (grid + FRAGMENT_SIZE <= left) | (grid >= left + DIGIT_SIZE)
        allowed = np.flatnonzero((clear_y[:, None] | clear_x[None, :]).ravel())
        others = rng.integers(0, n - 1, size=distractors)
        others += others >= i  # any digit but this canvas's own
        for j, place in zip(others, rng.choice(allowed, size=distractors)):
            y, x = divmod(int(place), free)
            box = img[y : y + FRAGMENT_SIZE, x : x + FRAGMENT_SIZE]
            np.maximum(box, _fragment(digits[j], rng), out=box)
        box = img[top : top + DIGIT_SIZE, left : left + DIGIT_SIZE]
        np.maximum(box, digits[i], out=box)
    return out, source, corners


def cluttered_split(
    canvas: int = 32,
    distractors: int | None = None,
    seed: int = GENERATION_SEED,
    val_copies: int = VAL_COPIES,
):
    """The fixed cluttered-digits split: ((images, labels) train, (images, labels) val).

    Images are float tensors (N, 1, canvas, canvas) in [-1, 1], labels long tensors; one training canvas
    per training digit, ``val_copies`` per validation digit. The same arguments give the same tensors.
    """
    if canvas not in CANVAS_SIZES:
        raise ClutteredError(
            f"cluttered digits are made on a {' or '.join(map(str, CANVAS_SIZES))} canvas, not {canvas}; "
            f"set --img-size {CANVAS_SIZES[0]} or {CANVAS_SIZES[1]}"
        )
    distractors = default_distractors(canvas) if distractors is None else distractors
    if distractors < 0 or val_copies < 1:
        raise ClutteredError(f"distractors must be >= 0 and val_copies >= 1, not {distractors} and {val_copies}")
    rng = np.random.default_rng(seed)
    parts = []
    for (X, y), copies in zip(source_split(), (1, val_copies)):
        images, source, _ = compose(upsample(X), canvas, distractors, copies, rng)
        x = torch.from_numpy(images).unsqueeze(1) * 2.0 - 1.0
        parts.append((x, torch.from_numpy(np.asarray(y)[source]).long()))
    return parts[0], parts[1]


class ClutteredDataset(ShiftedImages):
    """Canvases (N, 1, H, W) in [-1, 1] with labels, repeated to ``in_chans`` channels.

    Training images get a random shift of up to ``SHIFT`` pixels (one source pixel), as the digits do.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, in_chans: int, train: bool):
        super().__init__(images, targets, in_chans, train, shift=SHIFT)


def cluttered_datasets(img_size: int, in_chans: int, need_train: bool = True):
    """(train dataset or None, val dataset, class names) of the cluttered digits at ``img_size``."""
    (Xtr, ytr), (Xva, yva) = cluttered_split(img_size)
    train = ClutteredDataset(Xtr, ytr, in_chans, train=True) if need_train else None
    return train, ClutteredDataset(Xva, yva, in_chans, train=False), CLASSES


def validation_batch(img_size: int, in_chans: int, num_images: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``num_images`` validation canvases at ``img_size`` as training feeds them, and their labels."""
    _, (images, labels) = cluttered_split(img_size)
    if not 0 < num_images <= len(labels):
        raise ClutteredError(f"--num-images must be between 1 and {len(labels)} for the cluttered validation split")
    val = ClutteredDataset(images[:num_images], labels[:num_images], in_chans, train=False)
    return val.images, torch.tensor(val.targets)
