"""The demo's report: a markdown page with the numbers table, the loss curve and example images.

Plots use matplotlib's Agg backend (files only, no display), so a report renders on a headless node.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from genlip_megatron.eval.images import to_display

COLUMNS = [  # (metric key, header, format)
    ("caption_loss", "caption loss", "{:.3f}"),
    ("caption_perplexity", "perplexity", "{:.2f}"),
    ("zero_shot_sum", "zero-shot top-1 (sum)", "{:.3f}"),
    ("zero_shot_mean", "zero-shot top-1 (mean)", "{:.3f}"),
    ("linear_probe", "linear probe top-1", "{:.3f}"),
    ("attentive_probe", "attentive probe top-1", "{:.3f}"),
]


def metrics_table(rows: Sequence[tuple[str, dict]]) -> str:
    """Markdown table: one row per (name, metrics); '-' where a metric does not apply."""
    lines = ["| model | " + " | ".join(h for _, h, _ in COLUMNS) + " |",
             "|---|" + "---:|" * len(COLUMNS)]
    for name, metrics in rows:
        cells = [fmt.format(metrics[key]) if metrics.get(key) is not None else "-" for key, _, fmt in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _read_series(metrics_jsonl: str, key: str) -> tuple[list[int], list[float]]:
    """(steps, values of `key`) from the trainer's metrics.jsonl; the last record of a step wins."""
    values: dict[int, float] = {}
    with open(metrics_jsonl, encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if key in record and "step" in record:
                values[int(record["step"])] = float(record[key])
    steps = sorted(values)
    return steps, [values[s] for s in steps]


def read_losses(metrics_jsonl: str) -> tuple[list[int], list[float]]:
    """(steps, training losses); after a resume the repeated steps' last record wins."""
    return _read_series(metrics_jsonl, "loss")


def read_eval_losses(metrics_jsonl: str) -> tuple[list[int], list[float]]:
    """(steps, held-out losses) of the evaluations a run logged (training/held_out.py)."""
    return _read_series(metrics_jsonl, "eval/caption_loss")


def plot_loss_curve(steps: Sequence[int], losses: Sequence[float], path: str, title: str = "training loss",
                    eval_steps: Sequence[int] = (), eval_losses: Sequence[float] = ()) -> str:
    """Training loss per step (and its running mean); held-out losses as points when given."""
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(steps, losses, linewidth=0.8, alpha=0.4, label="per step")
    window = max(1, len(losses) // 50)
    if window > 1:  # a running mean makes the trend readable under per-step noise
        smooth = [sum(losses[max(0, i - window + 1): i + 1]) / len(losses[max(0, i - window + 1): i + 1])
                  for i in range(len(losses))]
        ax.plot(steps, smooth, linewidth=1.5, label=f"mean of {window}")
    if eval_steps:
        ax.plot(eval_steps, eval_losses, "o-", markersize=3, linewidth=1.2, label="held-out")
    ax.set_xlabel("step")
    ax.set_ylabel("caption loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_examples(images, lines_per_image: Sequence[Sequence[str]], path: str, columns: int = 4) -> str:
    """A grid of images [N, 3, H, W] in [-1, 1], each with a few text lines under it."""
    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.9 * rows), dpi=110, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, lines in zip(axes.flat, images, lines_per_image):
        ax.imshow(to_display(image), interpolation="nearest")
        ax.set_title("\n".join(lines), fontsize=7, loc="left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_markdown(path: str, sections: Sequence[tuple[str, str]], title: str) -> str:
    """sections: (heading, markdown body); image links are made relative to the report's folder."""
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(f"# {title}\n")
        f.writelines(f"\n## {heading}\n\n{body.rstrip()}\n" for heading, body in sections)
    os.replace(path + ".tmp", path)
    return path
