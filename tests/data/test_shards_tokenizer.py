"""Tokenizer identity and end/pad tokens for Qwen-style and demo tokenizer.json files."""

import hashlib

import pytest
from tokenizers import Tokenizer as HFTokenizer

from genlip_megatron.data.tokenizer import Tokenizer, train_bpe


@pytest.fixture
def demo(tmp_path):
    path = tmp_path / "demo" / "tokenizer.json"
    path.parent.mkdir()
    train_bpe(["a red cat", "a blue dog on a mat"] * 20, 300, str(path), min_frequency=1)
    return path


def test_identity_is_folder_name_and_file_sha256(demo):
    tok = Tokenizer.from_file(str(demo))
    assert tok.identity == {"name": "demo", "sha256": hashlib.sha256(demo.read_bytes()).hexdigest()}


def test_encode_adds_no_special_tokens_and_round_trips(demo):
    tok = Tokenizer.from_file(str(demo))
    ids = tok.encode("a red cat")
    assert tok.end_ids[0] not in ids and tok.pad_id not in ids
    assert tok.decode(ids) == "a red cat"
    assert tok.decode(tok.encode("ünseen wörds 日本")) == "ünseen wörds 日本"  # byte-level: no UNK


def test_qwen_style_vocabulary_ends_turns_with_im_end(demo, tmp_path):
    backend = HFTokenizer.from_file(str(demo))
    backend.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    path = tmp_path / "qwen-like.json"
    backend.save(str(path))
    tok = Tokenizer.from_file(str(path))
    assert tok.end_ids == [tok.token_to_id("<|im_end|>")]
    assert tok.name == "qwen-like" and tok.vocab_size == backend.get_vocab_size()


def test_training_is_deterministic(tmp_path):
    texts = [f"caption number {i} of a {c} thing" for i, c in enumerate(["red", "big", "odd"] * 30)]
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    train_bpe(texts, 280, str(a), min_frequency=1)
    train_bpe(texts, 280, str(b), min_frequency=1)
    assert a.read_bytes() == b.read_bytes()


def test_not_a_tokenizer_file_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not a tokenizers tokenizer.json"):
        Tokenizer.from_file(str(bad))
