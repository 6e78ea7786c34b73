"""Caption tokenizer: any Hugging Face `tokenizers` tokenizer.json, identified by its file's SHA-256.

The paper uses Qwen3's tokenizer (151,643 tokens + added specials, vocabulary padded to 151,936 by
the model config). For the embedded demo, `train_bpe` fits a small byte-level BPE on the captions
offline. Shards record the identity (name + sha256) so a dataset never mixes tokenizers.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Iterable, Sequence

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from genlip_megatron.data.input_files import InputFileError, one_line, open_regular, read_bounded
from genlip_megatron.errors import InputError

END_OF_TEXT = "<|endoftext|>"
# Tokens that close a caption turn, in order of preference: Qwen chat models end a turn with
# <|im_end|>; plain byte-level BPEs (GPT-2 style, our demo) with <|endoftext|>.
END_TOKEN_CANDIDATES = ("<|im_end|>", END_OF_TEXT, "</s>", "<eos>", "[SEP]")
PAD_TOKEN_CANDIDATES = ("<|pad|>", "<pad>", "[PAD]", END_OF_TEXT, "</s>")
DEMO_SPECIAL_TOKENS = [END_OF_TEXT, "<|pad|>"]
MAX_TOKENIZER_BYTES = 256 << 20  # Qwen3's tokenizer.json is 11 MB; the largest common ones ~35 MB


def file_sha256(path: str) -> str:
    sha = hashlib.sha256()
    with open_regular(path) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


class Tokenizer:
    """Thin wrapper: encode WITHOUT special tokens (prompt and end tokens are the loader's job)."""

    def __init__(self, backend: HFTokenizer, name: str, sha256: str, path: str | None = None,
                 end_tokens: Sequence[str] | None = None):
        self._backend = backend
        self.path = path
        self.name = name
        self.sha256 = sha256
        vocab = backend.get_vocab(with_added_tokens=True)
        if end_tokens is None:
            found = [t for t in END_TOKEN_CANDIDATES if t in vocab][:1]
            if not found:
                raise InputError(f"{path or name}: no end-of-text token among {END_TOKEN_CANDIDATES}")
            end_tokens = found
        missing = [t for t in end_tokens if t not in vocab]
        if missing:
            raise InputError(f"{path or name}: end tokens {missing} are not in the vocabulary")
        self.end_ids = [vocab[t] for t in end_tokens]
        self.pad_id = next((vocab[t] for t in PAD_TOKEN_CANDIDATES if t in vocab), self.end_ids[0])
        # One past the largest id (the embedding rows ids need), not the number of tokens: a
        # vocabulary with gaps (added tokens at high ids) holds fewer tokens than that.
        self.vocab_size = max(backend.get_vocab_size(with_added_tokens=True), max(vocab.values(), default=-1) + 1)

    @classmethod
    def from_file(cls, path: str, name: str | None = None,
                  end_tokens: Sequence[str] | None = None) -> "Tokenizer":
        """A `tokenizers` tokenizer.json, or a Hugging Face tokenizer folder holding one."""
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        try:  # regular files of bounded size only; hash and parse the same bytes
            data = read_bounded(path, MAX_TOKENIZER_BYTES)
            backend = HFTokenizer.from_str(data.decode("utf-8"))
        except InputFileError as exc:
            raise InputError(f"{exc} (a tokenizer.json)") from None
        except Exception as exc:  # the Rust side raises a plain Exception on bad JSON
            raise InputError(f"{one_line(path)}: not a tokenizers tokenizer.json ({one_line(str(exc))[:200]})") from None
        if name is None:
            # tokenizer.json files are usually named after their folder (".../Qwen3-0.6B/tokenizer.json").
            stem = os.path.splitext(os.path.basename(path))[0]
            name = os.path.basename(os.path.dirname(os.path.abspath(path))) if stem == "tokenizer" else stem
        return cls(backend, name, hashlib.sha256(data).hexdigest(), path=path, end_tokens=end_tokens)

    @property
    def identity(self) -> dict:
        return {"name": self.name, "sha256": self.sha256}

    def encode(self, text: str) -> list[int]:
        return self._backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=False)

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._backend.id_to_token(token_id)


_MARKUP = re.compile(r"<\|[^<>|\s]+\|>|</?[A-Za-z_]+>|\[[A-Z_]+\]")  # <|im_end|>, </s>, <eos>, [SEP]


def end_text_ids(tokenizer, end_text: str, setting: str = "data.end_text") -> tuple[int, ...]:
    """Ids of the end text that closes every caption (official: "<|im_end|>\n"), tokenised without
    special-token insertion, so it works with any tokenizer that has the pieces it names.

    Raises ValueError (one line naming `setting`) when a special-token piece of the text, like
    <|im_end|>, is not ONE token of this tokenizer (it would be spelled out character by character,
    which is not an end of turn), or when the tokenizer cannot reproduce the text at all.
    Duck-typed: needs encode(text) -> ids and decode(ids) -> text.
    """
    name = getattr(tokenizer, "name", "the tokenizer")
    for piece in _MARKUP.findall(end_text):
        if len(tokenizer.encode(piece)) != 1:
            present = [t for t in END_TOKEN_CANDIDATES if len(tokenizer.encode(t)) == 1]
            hint = f" (it has {', '.join(map(repr, present))})" if present else ""
            raise ValueError(f"{setting}={end_text!r}: {piece!r} is not a token of {name}{hint}; set {setting} "
                             "to the end-of-turn text of this tokenizer")
    ids = tuple(tokenizer.encode(end_text))
    if tokenizer.decode(ids) != end_text:
        raise ValueError(f"{setting}={end_text!r}: {name} does not reproduce it (decodes to "
                         f"{tokenizer.decode(ids)!r}); set {setting} to text this tokenizer can represent")
    return ids


def train_bpe(texts: Iterable[str], vocab_size: int, out_path: str, min_frequency: int = 2) -> None:
    """Fit a byte-level BPE (GPT-2 style) with <|endoftext|> and <|pad|>; write tokenizer.json.

    Byte-level means every string is encodable (no unknown token), and the result is deterministic
    for the same texts and settings, so the demo's tokenizer hash is reproducible.
    """
    backend = HFTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=DEMO_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = out_path + ".tmp"
    backend.save(tmp)
    os.replace(tmp, out_path)
