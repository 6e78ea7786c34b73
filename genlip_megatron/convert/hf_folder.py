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
            shutil.copyfile(source, os.path.join(folder, source.name))
            copied.append(source.name)
    return copied


def write_tokenizer(folder: str, tokenizer: str, end_text: str | None = None) -> str:
    """Copy tokenizer.json and write tokenizer_config.json (AutoTokenizer) naming eos - the first token
    of the run's end text (data.end_text, e.g. <|im_end|> of "<|im_end|>\n"), else the tokenizer's
    end-of-turn token - and its pad token, and generation_config.json (greedy captions end at eos)."""
    from genlip_megatron.data.tokenizer import Tokenizer, end_text_ids

    tok = Tokenizer.from_file(tokenizer)
    shutil.copyfile(tok.path, os.path.join(folder, TOKENIZER_FILE))
    eos_id = end_text_ids(tok, end_text)[0] if end_text else tok.end_ids[0]
    eos, pad = tok.id_to_token(eos_id), tok.id_to_token(tok.pad_id)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos, "pad_token": pad,
              "model_max_length": 1 << 20, "clean_up_tokenization_spaces": False}
    _write_json(os.path.join(folder, "tokenizer_config.json"), config)
    _write_json(os.path.join(folder, "special_tokens_map.json"), {"eos_token": eos, "pad_token": pad})
    generation = {"eos_token_id": eos_id, "pad_token_id": tok.pad_id, "do_sample": False, "max_new_tokens": 64}
    _write_json(os.path.join(folder, "generation_config.json"), generation)
    return TOKENIZER_FILE


def _write_json(path: str, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def make_world_readable(folder: str) -> None:
    """0644 files and a 0755 folder, whatever the umask or the copied sources' modes (as
    save_pretrained leaves them): an export is shared with other users and jobs."""
    os.chmod(folder, 0o755)
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if os.path.isfile(path) and not os.path.islink(path):
            os.chmod(path, 0o644)


def write_image_processor(folder: str, cfg) -> None:
    """Pixels as the model was trained on them: RGB, resize, [0, 1], then mean/std 0.5 -> [-1, 1]."""
    d, patch = cfg.data, cfg.model.patch_size
    config = {
        # SigLIP's processor does exactly the stage-1 steps (square resize, rescale, normalise).
        # Bilinear (PIL resample 2) like training's decoder (antialiased triangle filter).
        "image_processor_type": "SiglipImageProcessor",
        "do_resize": True, "size": {"height": d.image_size, "width": d.image_size}, "resample": 2,
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_convert_rgb": True,
        # Stage 2: Qwen2-VL's smart_resize with factor = patch (Qwen2VLImageProcessor's size rule,
        # data/image_geometry.py), pixel count in [min_pixels, max_pixels]; same rescale and normalisation.
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
                record = json.loads(line)
                if "loss" in record:  # a training step (evaluation lines carry eval/ keys only)
                    last = record
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


SITE_SECTIONS = ("launch", "logging", "checkpoint")  # accounts, partitions, hosts, run folders
DATASET_KEYS = ("manifest", "eval_manifest")


def dataset_name(path: str) -> str:
    """A dataset's folder name, without where it lives."""
    if not path:
        return ""
    path = os.path.normpath(path)
    folder = os.path.dirname(path) if path.endswith(".json") else path
    return os.path.basename(folder)


def shareable_config(cfg) -> dict:
    """The run config without site details: no launch / logging / checkpoint sections (accounts,
    partitions, paths), datasets named by their folder name only."""
    data = {k: v for k, v in config_to_dict(cfg).items() if k not in SITE_SECTIONS}
    for key in DATASET_KEYS:
        data["data"][key] = dataset_name(data["data"][key])
    return data


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
        "```python", "from PIL import Image",
        "from transformers import AutoImageProcessor, AutoModel, AutoTokenizer", "",
        "model = AutoModel.from_pretrained(FOLDER, trust_remote_code=True).eval()",
        "tokenizer = AutoTokenizer.from_pretrained(FOLDER, trust_remote_code=True)",
        "pixels = AutoImageProcessor.from_pretrained(FOLDER)(images=Image.open(PATH), return_tensors=\"pt\").pixel_values",
        "features = model.get_image_features(pixels)  # [B, patches, width] after ln_post",
        "# greedy caption: the training prompt follows the image",
        "prompt = tokenizer(model.config.caption_prompt, add_special_tokens=False, return_tensors=\"pt\").input_ids",
        "ids = model.generate(pixel_values=pixels, input_ids=prompt, max_new_tokens=32)",
        "caption = tokenizer.decode(ids[0, prompt.shape[1]:], skip_special_tokens=True)", "```", "",
        "## Training", "",
        f"- steps: {common.get('iteration')} (schedule: {cfg.schedule.train_iters} iterations, "
        f"lr {cfg.optimizer.lr}, {cfg.schedule.decay_style})",
        f"- data: {'synthetic batches' if cfg.train.synthetic_data else dataset_name(cfg.data.manifest) or 'unknown'}"
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
    lines += ["", "## Run configuration", "", "```yaml", yaml.safe_dump(shareable_config(cfg), sort_keys=False).strip(),
              "```", ""]
    path = os.path.join(folder, "README.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return path
