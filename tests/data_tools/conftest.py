import pytest

from data_tools.build import run_build
from data_tools.synthetic import make_caption
from data_tools.unit import BuildSettings
from genlip_megatron.data.tokenizer import Tokenizer, train_bpe


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tok") / "tokenizer.json")
    texts = [make_caption(i) for i in range(500)] + ["recap an orphan caption", "ünïcødé ok 日本"]
    train_bpe(texts, 400, path, min_frequency=1)
    return path


@pytest.fixture(scope="session")
def tokenizer(tokenizer_path):
    return Tokenizer.from_file(tokenizer_path)


@pytest.fixture
def build(tmp_path, tokenizer_path):
    """build(inputs, settings=None, **kw) -> (out_dir, result) into a fresh folder under tmp_path."""
    counter = iter(range(1000))

    def run(inputs, settings=None, out=None, **kwargs):
        out = out or str(tmp_path / f"out{next(counter)}")
        kwargs.setdefault("progress", False)
        result = run_build([str(i) for i in inputs], out, tokenizer_path, settings or BuildSettings(),
                           "Describe the image.", **kwargs)
        return out, result

    return run

