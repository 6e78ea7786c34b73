"""What using a model defaults to, read from the model itself: image size, prompt, end text, caption length
and tokenizer of a training run (its saved config and dataset) or of an exported Hugging Face folder
(its tokenizer.json, preprocessor_config.json and config.json).

So `genlip eval`, `genlip caption` and `genlip convert` need no tokenizer or size arguments for a
model this project trained or exported, from any working directory.
"""

from __future__ import annotations

import json
import os

from genlip_megatron.checkpoint import run_dir
from genlip_megatron.data.dataset_ref import folder_tokenizer_file, run_tokenizer, tokenizer_file
from genlip_megatron.eval.loading import hf_eval_tasks
from genlip_megatron.objectives import registry

PROMPT_KEY = "caption_prompt"  # written into an exported config.json (convert/to_hf.py)
END_TEXT_KEY = "caption_end_text"  # likewise: the run's data.end_text


def _hf_folder_defaults(path: str) -> dict:
    from genlip_megatron.convert.hf_reader import read_hf_config

    config = read_hf_config(path)  # a broken config.json is refused here, in one line naming it
    out: dict = {"tokenizer": folder_tokenizer_file(path), "why_no_tokenizer": f"{path} holds no tokenizer.json"}
    try:
        with open(os.path.join(path, "preprocessor_config.json"), encoding="utf-8") as f:
            size = json.load(f).get("size", {})
        out["image_size"] = size.get("height") or size.get("shortest_edge")
    except (OSError, ValueError, AttributeError, RecursionError):  # optional: the arguments can say it
        pass
    for key, name in ((PROMPT_KEY, "prompt"), (END_TEXT_KEY, "end_text")):
        if isinstance(getattr(config, key, None), str):
            out[name] = getattr(config, key)
    return out


def model_defaults(path: str) -> dict:
    """image_size, prompt, end_text, max_caption_tokens, tokenizer (path or None), why_no_tokenizer and
    the evaluation tasks its objective supports, as far as the model at `path` (run directory,
    checkpoint folder or HF folder) records them."""
    if run_dir.is_checkpoint(path):
        cfg = run_dir.read_run_config(run_dir.resolve_checkpoint(path))
        tokenizer, why = run_tokenizer(cfg)
        return {"image_size": cfg.data.image_size, "prompt": cfg.data.prompt,
                "max_caption_tokens": cfg.data.max_caption_tokens, "end_text": cfg.data.end_text,
                "tokenizer": tokenizer,
                "why_no_tokenizer": why, "tasks": registry.spec_for(cfg).eval_tasks}
    if os.path.isfile(os.path.join(path, "config.json")):
        return {**_hf_folder_defaults(path), "tasks": hf_eval_tasks(path)}
    return {}


def choose_tokenizer(argument: str | None, defaults: dict) -> str:
    """The tokenizer.json to use: the argument (tokenizer.json, HF tokenizer folder or dataset), else
    the model's own. ValueError (one line) when there is none."""
    if argument:
        return tokenizer_file(argument)
    if defaults.get("tokenizer"):
        return defaults["tokenizer"]
    why = defaults.get("why_no_tokenizer") or "the model records no tokenizer"
    raise ValueError(f"no tokenizer: {why}; pass --tokenizer (a tokenizer.json, a Hugging Face tokenizer "
                     "folder or the training dataset's folder)")


def check_model_vocab(model, tokenizer) -> None:
    """A model whose vocabulary cannot hold every token of the tokenizer is the wrong pair."""
    if model.config.vocab_size < tokenizer.vocab_size:
        raise ValueError(f"the model's vocabulary ({model.config.vocab_size}) is smaller than the tokenizer's "
                         f"{tokenizer.vocab_size} tokens ({tokenizer.path}): not the tokenizer it was trained with")
