"""What the locality command writes beside its figures: the per-head CSV and the markdown report."""

import csv
import os
import shlex
from collections.abc import Sequence

from torch import nn

from . import distances, interventions

COLUMNS = [
    "block",
    "type",
    "head",
    "nonlocality",
    "gate",
    "nonlocality_content",
    "nonlocality_positional",
    "centre_dx",
    "centre_dy",
    "sharpness",
]


def _number(value) -> str:
    return "" if value is None else f"{value:.6f}"


def _rows(report: dict) -> list[list[str]]:
    drop = report.get("ablation", {}).get("drop")
    rows = []
    for block in report["blocks"]:
        for h, distance in enumerate(block["nonlocality"]):

            def head(key: str, block: dict = block, h: int = h):
                return None if block[key] is None else block[key][h]

            centre = head("centre") or [None, None]
            row = [block["block"], block["type"], h, _number(distance), _number(head("gate"))]
            row += [_number(head("nonlocality_content")), _number(head("nonlocality_positional"))]
            row += [_number(centre[0]), _number(centre[1]), _number(head("sharpness"))]
            rows.append(row + ([_number(drop[block["block"]][h])] if drop is not None else []))
    return rows


def write_csv(reports: Sequence[dict], path: str, with_model: bool) -> None:
    ablated = any("ablation" in report for report in reports)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow((["model"] if with_model else []) + COLUMNS + (["ablation_drop"] if ablated else []))
        for report in reports:
            for row in _rows(report):
                row = row + ([""] if ablated and "ablation" not in report else [])
                writer.writerow(([report["label"]] if with_model else []) + row)


class Written:
    """The files a run writes, each with one sentence on how to read it (for report.md)."""

    def __init__(self, root: str):
        self.root, self.items = root, []

    def add(self, path: str, section: str, sentence: str) -> str:
        self.items.append((os.path.relpath(path, self.root), section, sentence))
        return path


SENTENCES = {
    "nonlocality": "Non-locality per block, one dot per head, in patches: low = the head looks near its query "
    "patch, high = far (a uniform head sits at the grid's mean pairwise distance); GPSA blocks shaded.",
    "gates": "Gate sigmoid(lambda) per GPSA block and head: 1 = the head follows its positional (convolution-like) "
    "attention, 0 = its content attention.",
    "parts": "Per GPSA head, the non-locality of its content part, its positional part and of the gated mix it "
    "applies: the mix sits between the two, nearer the part its gate favours.",
    "centres": "Where each GPSA head's positional attention peaks, as the (dx, dy) offset from the query patch "
    "(-(w0, w1)/(2 w2)); the marker area is the sharpness -w2, large = a narrow, convolution-like kernel.",
    "maps": "Every head's image-averaged attention for the query patch (red cross), rows = blocks, columns = "
    "heads, with the gate of GPSA heads above each map.",
    "overlay": "Image {index} with each head's attention of the boxed query patch on top (rows = blocks), and in "
    "the last column the attention rollout through all blocks up to that row: where the token's "
    "representation draws from, residuals included.",
}


def model_labels(
    names: Sequence[str | None], checkpoints: Sequence[str | None], models: Sequence[nn.Module]
) -> list[str]:
    labels = [
        name or getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
        for name, model in zip(names, models, strict=True)
    ]
    if len(set(labels)) < len(labels):  # the same architecture twice: name them after their checkpoints' folders
        labels = [
            os.path.basename(os.path.dirname(os.path.abspath(c))) if c else label
            for label, c in zip(labels, checkpoints, strict=True)
        ]
    if len(set(labels)) < len(labels):
        labels = [f"{i}_{label}" for i, label in enumerate(labels)]
    return labels


def write_markdown(path: str, argv: Sequence[str], reports: Sequence[dict], notes: Sequence[str], written: Written):
    lines = ["# Locality report", "", f"`python -m convit.locality {shlex.join(argv)}`", ""]
    for report in reports:
        rows, cols = report["grid_size"]
        lines.append(
            f"- **{report['label']}**: {report['architecture']} (from {report['family']}), {len(report['blocks'])} blocks, "
            f"{report['num_heads']} heads, {report['local_up_to_layer']} GPSA blocks, {rows}x{cols} patch grid, "
            f"{report['num_images']} images of {report['data']}"
            + (f", weights {report['checkpoint']}" if report["checkpoint"] else "")
            + (f", top-1 {100 * report['ablation']['top1']:.1f}%" if "ablation" in report else "")
        )
    lines += [""] + [f"> Note: {note}" for note in notes] + ([""] if notes else [])
    for report in reports:
        if report.get("distances"):
            lines += [distances.markdown_table(report["distances"], report["label"]), ""]
        if report.get("interventions"):
            lines += [
                f"Gate interventions, **{report['label']}**:",
                "",
                interventions.markdown_table(report["interventions"]),
                "",
            ]
    lines += [
        "Non-locality is the attention-weighted distance in patches from each query patch to the patches it "
        "attends, averaged over queries and images; class and register tokens are left out.",
        "",
    ]
    section = None
    for rel, item_section, sentence in written.items:
        if item_section != section:
            section = item_section
            lines += [f"## {section}", ""]
        if rel.endswith(".png"):
            lines += [f"![{rel}]({rel})", "", f"`{rel}`: {sentence}", ""]
        else:
            lines += [f"- [`{rel}`]({rel}): {sentence}", ""]
    with open(path, "w") as handle:
        handle.write("\n".join(lines))
