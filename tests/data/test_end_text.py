"""The end text (`data.end_text`, official "<|im_end|>\\n"): tokenised without special-token
insertion, it closes every caption the loader builds, and every one of its tokens carries loss; a
tokenizer that lacks a piece it names is refused in one line naming the setting."""

from __future__ import annotations

import os

import numpy as np
import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from data_tools.build import run_build
from data_tools.merge import merge
from data_tools.synthetic import make_caption, write_synthetic_tar
from data_tools.unit import BuildSettings
from genlip_megatron.config.load import load_config
from genlip_megatron.data.tokenizer import Tokenizer, end_text_ids, train_bpe
from genlip_megatron.training.batches import build_batch_source


def chat_tokenizer(path: str) -> str:
    """A byte-level BPE with Qwen's chat specials (<|endoftext|>, <|im_start|>, <|im_end|>)."""
    backend = HFTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, min_frequency=1, show_progress=False,
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator([make_caption(i) for i in range(300)], trainer=trainer)
    backend.save(path)
    return path


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    return Tokenizer.from_file(chat_tokenizer(str(tmp_path_factory.mktemp("tok") / "tokenizer.json")))


def test_official_end_text_is_two_tokens_im_end_and_newline(chat):
    ids = end_text_ids(chat, "<|im_end|>\n")
    assert ids == (chat.token_to_id("<|im_end|>"), chat.encode("\n")[0]) and len(chat.encode("\n")) == 1
    assert chat.decode(ids) == "<|im_end|>\n"


def test_a_tokenizer_without_the_end_token_is_refused_naming_the_setting(tmp_path):
    path = str(tmp_path / "plain.json")
    train_bpe([make_caption(i) for i in range(100)], 300, path, min_frequency=1)  # no <|im_end|>
    plain = Tokenizer.from_file(path)
    with pytest.raises(ValueError) as info:
        end_text_ids(plain, "<|im_end|>\n")
    [line] = str(info.value).splitlines()
    assert line.startswith("data.end_text='<|im_end|>\\n': '<|im_end|>' is not a token of plain")
    assert "'<|endoftext|>'" in line  # what it has instead
    assert end_text_ids(plain, "<|endoftext|>") == (plain.token_to_id("<|endoftext|>"),)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, chat):
    root = tmp_path_factory.mktemp("shards")
    write_synthetic_tar(str(root / "a.tar"), 24, size=(32, 32))
    out = str(root / "out")
    run_build([str(root / "a.tar")], out, chat.path, BuildSettings(), "Describe the image in detail.",
              progress=False)
    merge(out)
    return os.path.join(out, "manifest.json")


def _config(manifest, *overrides):
    return load_config("tiny_cpu", [f"data.manifest={manifest}", "data.image_size=16", "data.seq_length=128",
                                    "data.end_text=<|im_end|>\n", "data.num_workers=1",
                                    "train.micro_batch_size=1", "train.global_batch_size=2", *overrides])


def test_every_caption_the_loader_builds_ends_with_the_end_text_all_in_the_loss(manifest, chat):
    cfg = _config(manifest)
    end = list(end_text_ids(chat, "<|im_end|>\n"))
    batch = build_batch_source(cfg, 0, 1).next()
    labels, loss = batch.labels[0].numpy(), batch.loss_mask[0].numpy()
    segments = batch.segment_ids[0].numpy()
    captions = {make_caption(i) for i in range(24)}
    seen = 0
    for seg in range(segments.max() + 1):
        where = np.flatnonzero((segments == seg) & (loss > 0))
        targets = labels[where].tolist()
        assert targets[-2:] == end  # the sample's label sequence ends with the end text ...
        assert np.all(loss[where[-2:]] == 1.0)  # ... and both its tokens carry loss
        assert chat.decode(targets[:-2]) in captions  # before it: the whole caption, nothing else
        seen += 1
    assert seen >= 2


def test_a_caption_cut_by_the_caption_cap_carries_no_end_text(manifest, chat):
    cfg = _config(manifest, "data.max_caption_tokens=3")
    batch = build_batch_source(cfg, 0, 1).next()
    labels, loss = batch.labels[0].numpy(), batch.loss_mask[0].numpy()
    segments = batch.segment_ids[0].numpy()
    end_id = chat.token_to_id("<|im_end|>")
    for seg in range(segments.max() + 1):
        targets = labels[(segments == seg) & (loss > 0)].tolist()
        assert len(targets) == 3 and end_id not in targets  # 12-word captions: always cut
