"""`genlip caption IMAGE [IMAGE ...] --checkpoint PATH`: greedy captions from the GenLIP trunk itself.

The model reads [image][prompt] and appends its argmax token until the end-of-turn token (or
--max-new-tokens). Checkpoint: an HF folder (image size, prompt and tokenizer from its own files) or a training run
directory / checkpoint folder (from the run's config and its training dataset).
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", help="image files (any format Pillow reads)")
    parser.add_argument("--checkpoint", required=True, help="HF folder, run directory or checkpoint folder")
    parser.add_argument("--tokenizer", help="tokenizer.json, HF tokenizer folder or dataset folder "
                                            "(default: the model's own, or its training dataset's)")
    parser.add_argument("--image-size", type=int, help="default: the model's (training config or processor)")
    parser.add_argument("--prompt", help="default: the model's training prompt")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")


def run(args) -> int:
    import torch

    from genlip_megatron.config.schema import DataConfig
    from genlip_megatron.data.tokenizer import Tokenizer
    from genlip_megatron.eval.generate import caption_images
    from genlip_megatron.eval.images import load_image_file
    from genlip_megatron.eval.loading import load_model
    from genlip_megatron.eval.model_defaults import check_model_vocab, choose_tokenizer, model_defaults
    from genlip_megatron.eval.sequences import text_layout

    torch.set_num_threads(args.threads)
    try:
        defaults = model_defaults(args.checkpoint)
        tokenizer = Tokenizer.from_file(choose_tokenizer(args.tokenizer, defaults))
        image_size = args.image_size or defaults.get("image_size")
        if not image_size:
            raise ValueError(f"--image-size is required: {args.checkpoint} records no image size")
        prompt = args.prompt if args.prompt is not None else defaults.get("prompt", DataConfig().prompt)
        images = torch.stack([load_image_file(path, image_size) for path in args.images])
        model = load_model(args.checkpoint)
        check_model_vocab(model, tokenizer)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    layout = text_layout(tokenizer, prompt, end_text=defaults.get("end_text"))
    for path, text in zip(args.images, caption_images(model, tokenizer, images, layout, args.max_new_tokens)):
        print(f"{path}\t{text}")
    return 0
