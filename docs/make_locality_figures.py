"""Train a tiny ConViT on sklearn's digits (CPU, 2-3 minutes) and draw the figures of docs/LOCALITY.md.

    OMP_NUM_THREADS=1 PYTHONPATH=. python docs/make_locality_figures.py [--epochs 14] [--out docs/figures]

The first 297 digits are held out for validation (and for the figures); the model trains on the rest.
The model is ``convit_tiny`` with its shape overridden (CONFIG), saved as a training checkpoint would be.
Each epoch, ``epoch_locality`` on 64 held-out digits goes into ``log.jsonl`` as a training loop would log it.
"""

import argparse
import json
import os
import tempfile
import time

import torch
import torch.nn.functional as F

from convit import locality as L

CONFIG = dict(
    model="convit_tiny",
    img_size=16,
    patch_size=2,
    embed_dim=96,
    num_heads=4,
    depth=6,
    local_up_to_layer=4,
    locality_strength=1.0,
    num_classes=10,
)
HELD_OUT = 297


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=14)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "figures"))
    args = parser.parse_args()
    torch.manual_seed(0)
    model = _create()
    images, labels = L._digits_batch(model, 1797)
    val_x, val_y, train_x, train_y = images[:HELD_OUT], labels[:HELD_OUT], images[HELD_OUT:], labels[HELD_OUT:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    steps = args.epochs * ((len(train_x) + 31) // 32)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    work = tempfile.mkdtemp(prefix="convit_digits_")
    log_path = os.path.join(work, "log.jsonl")
    start = time.perf_counter()
    with open(log_path, "w") as log:
        log.write(json.dumps({"epoch": 0, "locality": L.epoch_locality(model, val_x[:64])}) + "\n")
        for epoch in range(1, args.epochs + 1):
            model.train()
            order = torch.randperm(len(train_x))
            for batch in order.split(32):
                loss = F.cross_entropy(model(train_x[batch]), train_y[batch], label_smoothing=0.1)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
            model.eval()
            with torch.no_grad():
                accuracy = (model(val_x).argmax(-1) == val_y).float().mean().item()
            log.write(
                json.dumps(
                    {
                        "epoch": epoch,
                        "train_loss": loss.item(),
                        "val_acc": accuracy,
                        "locality": L.epoch_locality(model, val_x[:64]),
                    }
                )
                + "\n"
            )
            log.flush()
            print(
                f"epoch {epoch}: loss {loss.item():.3f}, held-out top-1 {100 * accuracy:.1f}% "
                f"({time.perf_counter() - start:.0f}s)"
            )
    checkpoint = os.path.join(work, "digits.pth")
    torch.save({"model": model.state_dict(), "args": CONFIG}, checkpoint)
    L.main(
        ["--checkpoint", checkpoint, "--data", "digits", "--num-images", str(HELD_OUT), "--ablate", "--out", args.out]
    )
    L.plot_log(log_path, args.out)
    os.remove(os.path.join(args.out, "locality.csv"))  # the figures are what the docs need
    print(f"figures in {args.out}; log and checkpoint in {work}")


def _create():
    import timm

    kwargs = {k: v for k, v in CONFIG.items() if k != "model"}
    return timm.create_model(CONFIG["model"], **kwargs)


if __name__ == "__main__":
    main()
