"""The shard loader a run's config describes: one definition of what a run reads, for training's
stream (data.manifest) and for the held-out samples it evaluates on (data.eval_manifest), so that
`genlip eval` of a checkpoint on the eval dataset sees exactly the sequences the run evaluated.

Held-out samples: the eval dataset's global order from position 0 (seed data.seed), packed into
global batches of train.global_batch_size sequences of data.seq_length tokens, without random crops.
The packing plan of a global step is the same on every rank and under any data-parallel size
(data/rank_schedule.py), so the sequences - and a loss summed over them - do not depend on the layout.
"""

from __future__ import annotations

from genlip_megatron.data.sample_sequence import TextLayout


def checked_text_layout(cfg, tokenizer, max_image_tokens: int) -> TextLayout:
    """The prompt and end text around every caption and the sample caps, refused (ConfigError naming
    the key) when the tokenizer's ids do not fit model.vocab_size, the tokenizer lacks a token of
    data.end_text, or the largest image with the prompt leaves no caption token within the cap."""
    from genlip_megatron.config.load import ConfigError
    from genlip_megatron.data.tokenizer import end_text_ids

    d, m = cfg.data, cfg.model
    if tokenizer.vocab_size > m.vocab_size:
        raise ConfigError([f"model.vocab_size={m.vocab_size} is smaller than the {tokenizer.vocab_size} tokens "
                           f"of the dataset's tokenizer ({tokenizer.name}): its ids would index past the "
                           "embedding"])
    try:
        end = end_text_ids(tokenizer, d.end_text)
    except ValueError as exc:
        raise ConfigError([str(exc)]) from None
    text = TextLayout(tuple(tokenizer.encode(d.prompt)) if d.prompt else (), end,
                      d.max_caption_tokens, d.max_sample_tokens).capped(d.seq_length)
    cap_key = "data.max_sample_tokens" if d.max_sample_tokens is not None else "data.seq_length"
    room = text.max_sample_tokens - max_image_tokens  # longer samples are cut, but one must fit
    if room <= len(text.prompt_ids):
        raise ConfigError([f"data.prompt is {len(text.prompt_ids)} tokens: with up to {max_image_tokens} "
                           f"image tokens no caption token fits {cap_key}={text.max_sample_tokens}"])
    return text


def shard_loader(cfg, manifest: str, dp_rank: int, dp_size: int, augment: bool = True):
    """PackedLoader over dataset `manifest` (folder or manifest.json) for this data-parallel rank, with
    the run's geometry, text layout, packing and decoder. augment=False: no random crops (evaluation)."""
    from genlip_megatron.data.image_geometry import ImageGeometry
    from genlip_megatron.data.loader import PackedLoader
    from genlip_megatron.data.manifest import load_tokenizer, open_dataset

    d, m, t = cfg.data, cfg.model, cfg.train
    dataset = open_dataset(manifest)
    tokenizer = load_tokenizer(dataset.manifest)  # the shards' own (hash) and ids within it (manifest)
    geometry = ImageGeometry(patch_size=m.patch_size, image_size=d.image_size,
                             native_resolution=d.native_resolution, min_pixels=d.min_pixels,
                             max_pixels=d.max_pixels, random_resized_crop=d.random_resized_crop and augment,
                             crop_scale=tuple(d.crop_scale), seed=d.seed)
    text = checked_text_layout(cfg, tokenizer, geometry.max_image_tokens())
    return PackedLoader(dataset, geometry, text, d.seq_length, t.global_batch_size, t.micro_batch_size,
                        dp_rank, dp_size, d.seed, decoder="dali", decoder_device=d.decoder_device,
                        num_workers=d.num_workers, num_threads=d.num_threads,
                        max_bad_fraction=d.max_bad_fraction, vocab_size=tokenizer.vocab_size)
