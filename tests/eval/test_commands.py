"""`genlip eval` and `genlip caption` on an HF folder report what the library computes."""

import json

import numpy as np
import pytest
from eval_fixtures import tiny_model
from PIL import Image

from genlip_megatron.cli import main
from genlip_megatron.data.tokenizer import Tokenizer, train_bpe
from genlip_megatron.eval.datasets import load_jsonl_split
from genlip_megatron.eval.generate import caption_images
from genlip_megatron.eval.likelihood import caption_loss
from genlip_megatron.eval.loading import load_model
from genlip_megatron.eval.sequences import text_layout

NAMES = ["bag", "boot", "shirt"]
PROMPT = "describe it"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """An HF model folder, a tokenizer, 6 labelled 8 x 8 PNGs in a JSONL and a zero-shot file."""
    root = tmp_path_factory.mktemp("eval_cmd")
    captions = [f"a photo of a {n}." for n in NAMES]
    train_bpe(captions * 20 + [PROMPT] * 5, 300, str(root / "tokenizer.json"), min_frequency=1)
    tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
    tiny_model(vocab_size=tokenizer.vocab_size).save_pretrained(root / "model")
    rng = np.random.default_rng(0)
    with open(root / "test.jsonl", "w") as f:
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8), mode="L").save(root / f"{i}.png")
            f.write(json.dumps({"image": f"{i}.png", "caption": captions[i % 3], "label": i % 3}) + "\n")
    (root / "zs.json").write_text(json.dumps({"class_names": NAMES, "captions": [[c] for c in captions]}))
    return root


def test_eval_command_reports_the_library_caption_loss(folder, tmp_path):
    out = tmp_path / "results.json"
    code = main(["eval", "--checkpoint", str(folder / "model"), "--tokenizer", str(folder / "tokenizer.json"),
                 "--test", str(folder / "test.jsonl"), "--train", str(folder / "test.jsonl"),
                 "--zero-shot", str(folder / "zs.json"), "--image-size", "8", "--prompt", PROMPT,
                 "--pixel-baseline", "--random-baseline", "--json", str(out)])
    assert code == 0
    results = json.loads(out.read_text())
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    test = load_jsonl_split(str(folder / "test.jsonl"), 8)
    want = caption_loss(load_model(str(folder / "model")), tokenizer, test.images, test.captions,
                        text_layout(tokenizer, PROMPT))
    assert results["model"]["caption_loss"] == pytest.approx(want["caption_loss"], rel=1e-6)
    assert set(results) == {"model", "random", "pixels"}
    for key in ("zero_shot_sum", "zero_shot_mean", "linear_probe"):
        assert 0.0 <= results["model"][key] <= 1.0


def test_caption_command_prints_one_greedy_caption_per_image(folder, capsys):
    images = [str(folder / f"{i}.png") for i in range(2)]
    code = main(["caption", *images, "--checkpoint", str(folder / "model"), "--tokenizer",
                 str(folder / "tokenizer.json"), "--image-size", "8", "--prompt", PROMPT, "--max-new-tokens", "5"])
    assert code == 0
    lines = capsys.readouterr().out.strip().split("\n")
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    data = load_jsonl_split(str(folder / "test.jsonl"), 8, limit=2)
    want = caption_images(load_model(str(folder / "model")), tokenizer, data.images, text_layout(tokenizer, PROMPT), 5)
    assert lines == [f"{path}\t{text}" for path, text in zip(images, want)]
