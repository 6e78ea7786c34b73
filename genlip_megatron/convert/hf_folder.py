"""Everything of an exported Hugging Face GenLIP folder except the weights and config.json.

- the modeling code (genlip_megatron/hf/*.py, which import only torch and transformers), so
  `AutoModel.from_pretrained(folder, trust_remote_code=True)` needs nothing of this repository;
- the tokenizer (a `tokenizers` tokenizer.json plus a tokenizer_config.json for AutoTokenizer);
- preprocessor_config.json: resize / rescale / normalise for the 224 x 224 stage-1 input, and the
  native-resolution (stage 2) rule under `genlip_native_resolution`;
- README.md, the model card: training data, steps, config, and evaluation numbers of the run.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import yaml

import genlip_megatron.hf as hf_package
from genlip_megatron.checkpoint import run_dir as run_layout
from genlip_megatron.config.load import config_to_dict

TOKENIZER_FILE = "tokenizer.json"


def copy_modeling_code(folder: str) -> list[str]:
    copied = []
    for source in sorted(Path(hf_package.__file__).parent.glob("*.py")):
        if source.name != "__init__.py":
            shutil.copy(source, os.path.join(folder, source.name))
            copied.append(source.name)
    return copied


def run_tokenizer(cfg) -> str | None:
    """The dataset's tokenizer.json (next to its manifest), when it still exists."""
    if not cfg.data.manifest:
        return None
    path = os.path.join(os.path.dirname(os.path.abspath(cfg.data.manifest)), TOKENIZER_FILE)
    return path if os.path.isfile(path) else None


def write_tokenizer(folder: str, tokenizer: str | None) -> str | None:
    if tokenizer is None:
        return None
    if not os.path.isfile(tokenizer):
        raise FileNotFoundError(f"tokenizer file {tokenizer} does not exist")
    shutil.copy(tokenizer, os.path.join(folder, TOKENIZER_FILE))
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1 << 20}, f, indent=2)
    return TOKENIZER_FILE


def write_image_processor(folder: str, cfg) -> None:
    """Pixels as the model was trained on them: RGB, resize, [0, 1], then mean/std 0.5 -> [-1, 1]."""
    d, patch = cfg.data, cfg.model.patch_size
    config = {
        # SigLIP's processor does exactly the stage-1 steps (square resize, rescale, normalise).
        "image_processor_type": "SiglipImageProcessor",
        "do_resize": True, "size": {"height": d.image_size, "width": d.image_size}, "resample": 3,
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_convert_rgb": True,
        # Stage 2 (no HF processor does this): keep the aspect ratio, both sides multiples of the
        # patch, pixel count in [min_pixels, max_pixels]; same rescale and normalisation.
        "genlip_native_resolution": {"patch_size": patch, "min_pixels": d.min_pixels,
                                     "max_pixels": d.max_pixels, "used_in_training": d.native_resolution},
    }
    with open(os.path.join(folder, "preprocessor_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)


def _last_metrics(run_dir: str) -> dict:
    path = run_layout.metrics_path(run_dir)
    if not os.path.isfile(path):
        return {}
    last = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                last = json.loads(line)
    return last


def _flatten(prefix: str, value, rows: list) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, rows)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        rows.append((prefix, value))


def _evaluation_rows(eval_json: list[str]) -> list[tuple[str, float]]:
    rows = []
    for path in eval_json:
        with open(path, encoding="utf-8") as f:
            _flatten(Path(path).stem, json.load(f), rows)
    return rows


def write_model_card(folder: str, reader, cfg, config, weights: dict, eval_json: list[str]) -> str:
    common, m = reader.common, cfg.model
    run_dir = os.path.dirname(os.path.abspath(reader.folder))
    metrics = _last_metrics(run_dir)
    data = common.get("data", {}) or {}
    lines = [
        "---", "library_name: transformers", "tags: [genlip, vision-encoder, megatron-core]", "---", "",
        f"# GenLIP {m.hidden_size}w x {m.num_layers}L (patch {m.patch_size})", "",
        "GenLIP (\"Let ViT Speak\", arXiv 2605.00809): one transformer trunk over image patches and caption "
        "tokens, trained by next-token prediction under a prefix-LM mask. Exported from a genlip-megatron "
        "checkpoint; weights in the official GenLIP layout (model_type `genlip`).", "",
        "```python", "from transformers import AutoModel",
        "model = AutoModel.from_pretrained(FOLDER, trust_remote_code=True)",
        "features = model.get_image_features(pixel_values)  # [B, patches, width] after ln_post", "```", "",
        "## Training", "",
        f"- steps: {common.get('iteration')} (schedule: {cfg.schedule.train_iters} iterations, "
        f"lr {cfg.optimizer.lr}, {cfg.schedule.decay_style})",
        f"- data: {'synthetic batches' if cfg.train.synthetic_data else cfg.data.manifest or 'unknown'}"
        f" (consumed sequences: {data.get('consumed_sequences', data.get('consumed_samples', 'n/a'))}); "
        f"images {'native resolution' if cfg.data.native_resolution else f'{cfg.data.image_size}px'}, "
        f"packed to {cfg.data.seq_length} tokens, prompt {cfg.data.prompt!r}",
        f"- parallel layout of the source checkpoint: {common.get('layout')}",
        f"- precision: {cfg.train.precision}; exported dtype: {weights['dtype']}; parameters: {weights['parameters']:,}",
    ]
    if metrics:
        lines.append(f"- last logged step {metrics.get('step', metrics.get('iteration'))}: "
                     f"loss {metrics.get('loss')}")
    lines += ["", "## Evaluation", ""]
    rows = _evaluation_rows(eval_json)
    lines += (["| metric | value |", "|---|---|"] + [f"| {k} | {v:.4g} |" for k, v in rows]) if rows else [
        "No evaluation results were given to the export (`genlip convert to-hf --eval-json`)."]
    lines += ["", "## Run configuration", "", "```yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False).strip(),
              "```", ""]
    path = os.path.join(folder, "README.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return path
