#!/usr/bin/env python
"""How far a converted ViT's outputs are from the ViT's, before any training: timm's deit_tiny at random init.

    python -m experiments.from_vit.distance

prints, per number of GPSA blocks and initial gate, the relative distance of the logits ||z_c - z|| / ||z||,
the largest change of a softmax probability and the share of images whose top-1 class is unchanged, on
standard-normal images (no data, no weights downloaded). The digits twin's numbers come from run.py.
"""

import argparse

import timm
import torch

from convit.convert import from_vit


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="deit_tiny_patch16_224")
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--layers", default="0,1,4,10", help="numbers of GPSA blocks to convert")
    p.add_argument("--gates", default="0.001,0.1,0.5")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    vit = timm.create_model(args.model).eval()
    images = torch.randn(args.images, 3, *vit.patch_embed.img_size)
    with torch.no_grad():
        z = vit(images)
    print(f"{args.model}, random init (seed {args.seed}), {args.images} standard-normal images")
    print("| GPSA blocks | gate | logit distance | max prob change | same top-1 (%) |")
    print("|---:|---:|---:|---:|---:|")
    for layers in (int(x) for x in args.layers.split(",")):
        for gate in (float(x) for x in args.gates.split(",")):
            with torch.no_grad():
                zc = from_vit(vit, local_up_to_layer=layers, gate=gate)(images)
            dist = float((zc - z).norm() / z.norm())
            prob = float((zc.softmax(-1) - z.softmax(-1)).abs().max())
            same = 100 * float((zc.argmax(-1) == z.argmax(-1)).float().mean())
            print(f"| {layers} | {gate:g} | {dist:.4f} | {prob:.2e} | {same:.0f} |")


if __name__ == "__main__":
    main()
