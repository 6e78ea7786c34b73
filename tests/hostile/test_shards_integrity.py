"""Silent wrong training data, refused: EXIF rotation (DALI, the reference decoder and the stored size
agree), token ids outside the vocabulary (checked at build, merge, verify, open and in the loader), a
swapped tokenizer.json, nonsense build flags, and two builds into one folder."""

import io
import json
import multiprocessing
import os
import shutil

import numpy as np
import pytest
from data_harness import genlip, snapshot, tokenizer_file
from PIL import Image, ImageOps

from data_tools.build import BuildError, run_build
from data_tools.merge import merge
from data_tools.synthetic import make_caption, sample_members, write_synthetic_tar, write_tar
from data_tools.unit import BuildSettings
from genlip_megatron.cli import main
from genlip_megatron.data.dali_pipeline import ImageItem, build_image_pipeline, run_image_pipeline
from genlip_megatron.data.image_codec import ImageSettings
from genlip_megatron.data.manifest import load_tokenizer, open_dataset
from genlip_megatron.data.reference_decode import reference_process
from genlip_megatron.data.shards import ShardError, ShardReader, ShardWriter
from genlip_megatron.data.tokenizer import Tokenizer, train_bpe

pytestmark = pytest.mark.timeout(600)


def _dataset(tmp_path, name="ds", tars=2, per_tar=12, settings=None, **kw):
    inputs = tmp_path / f"{name}-in"
    if not inputs.exists():
        inputs.mkdir()
        for t in range(tars):
            write_synthetic_tar(str(inputs / f"{t}.tar"), per_tar, first=100 * t)
    out = str(tmp_path / name)
    result = run_build([str(inputs)], out, tokenizer_file(), settings or BuildSettings(), "Describe.",
                       progress=False, **kw)
    return out, result


# --- EXIF orientation ---------------------------------------------------------------------------------

def _photo(height=120, width=200):
    from sklearn.datasets import load_sample_images

    return np.asarray(Image.fromarray(load_sample_images().images[0]).resize((width, height), Image.BICUBIC))


def _exif_jpeg(rgb, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def _dali_and_reference(encoded_images, sizes):
    items = [ImageItem(np.frombuffer(e, np.uint8) if isinstance(e, bytes) else e, (0.0, 0.0, 1.0, 1.0), s)
             for e, s in zip(encoded_images, sizes)]
    pipe = build_image_pipeline(lambda k: items, max_batch_size=len(items), pad_to_batch=True,
                                num_workers=1, num_threads=1)
    return run_image_pipeline(pipe), [reference_process(it.encoded, it.window, it.size) for it in items]


def test_exif_rotated_jpegs_are_stored_upright_and_every_decoder_agrees(tmp_path):
    rgb = _photo()
    originals = {o: _exif_jpeg(rgb, o) for o in range(1, 9)}
    write_tar(str(tmp_path / "in.tar"),
              [m for o, data in originals.items() for m in sample_members(f"o{o}", data, make_caption(o))])
    out = str(tmp_path / "out")
    run_build([str(tmp_path / "in.tar")], out, tokenizer_file(), BuildSettings(), "p", progress=False)
    reader = ShardReader(os.path.join(out, "shard-000000"))
    stored = [reader[i] for i in range(len(reader))]
    assert [s.key for s in stored] == [f"o{o}" for o in range(1, 9)]
    for s, (o, data) in zip(stored, originals.items()):
        # Pillow's exif_transpose is the independent reference for what "upright" means
        upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"), np.float32)
        assert (s.height, s.width) == upright.shape[:2]
        if o == 1:
            assert s.image.tobytes() == data  # upright already: the original bytes are kept
        shown = np.asarray(Image.open(io.BytesIO(s.image.tobytes())).convert("RGB"), np.float32)
        assert np.abs(shown - upright).mean() < 3.0  # one JPEG re-encode at quality 95
    dali, reference = _dali_and_reference([s.image for s in stored], [(s.height, s.width) for s in stored])
    for d, r, s in zip(dali, reference, stored):
        assert d.shape == r.shape == (3, s.height, s.width)
        assert np.abs(d - r).mean() * 127.5 < 0.5


def test_a_jpeg_still_carrying_exif_decodes_identically_in_dali_and_the_reference():
    """Shards from before this rule (or made elsewhere) may hold EXIF-rotated JPEGs: both decoders
    show the stored pixels as they are, matching the stored height x width (once 72+ levels apart)."""
    rgb = _photo(48, 80)
    data = [_exif_jpeg(rgb, 6), _exif_jpeg(rgb, 3)]
    dali, reference = _dali_and_reference(data, [(48, 80), (48, 80)])
    for d, r in zip(dali, reference):
        assert d.shape == r.shape == (3, 48, 80)
        assert np.abs(d - r).mean() * 127.5 < 0.5


# --- token ids -----------------------------------------------------------------------------------------

def test_build_rejects_a_sample_whose_token_ids_leave_the_vocabulary(tmp_path, monkeypatch):
    real = Tokenizer.encode

    def encode(self, text):
        ids = real(self, text)
        return [self.vocab_size + 3] if text.startswith("red") else ids

    monkeypatch.setattr(Tokenizer, "encode", encode)
    members = [m for i in range(6) for m in sample_members(f"k{i}", _exif_jpeg(_photo(16, 16), 1),
                                                           ("red " if i == 2 else "blue ") + make_caption(i))]
    write_tar(str(tmp_path / "in.tar"), members)
    out = str(tmp_path / "out")
    result = run_build([str(tmp_path / "in.tar")], out, tokenizer_file(), BuildSettings(), "p", progress=False)
    assert result["totals"]["rejects"] == {"token_out_of_range": 1} and result["totals"]["samples"] == 5
    report = json.load(open(os.path.join(out, "shard-000000.report.json")))
    assert report["max_token_id"] < Tokenizer.from_file(tokenizer_file()).vocab_size


def _rewrite_shard_with_ids(out, unit, bad_ids, report_max=None):
    """Replace sample 1's tokens by `bad_ids` with every hash recomputed (a crafted or buggy shard that
    passes hash checks), and make the unit's report agree (its max_token_id honest unless given)."""
    prefix = os.path.join(out, unit)
    reader = ShardReader(prefix)
    samples = [reader[i] for i in range(len(reader))]
    with ShardWriter(prefix + ".new", reader.tokenizer_sha256) as writer:
        for i, s in enumerate(samples):
            writer.add(s.key, s.image.tobytes(), bad_ids if i == 1 else s.tokens, s.height, s.width)
        index = writer.close()
    del reader, samples
    for suffix in (".bin", ".idx"):
        os.replace(prefix + ".new" + suffix, prefix + suffix)
    path = prefix + ".report.json"
    report = json.load(open(path))
    all_max = max(max(bad_ids), report["max_token_id"])
    report.update(bin_sha256=index.bin_sha256, max_token_id=all_max if report_max is None else report_max)
    json.dump(report, open(path, "w"))


def test_out_of_range_token_ids_are_refused_by_merge_verify_open_and_the_loader(tmp_path, caplog):
    out, _ = _dataset(tmp_path)
    vocab = Tokenizer.from_file(tokenizer_file()).vocab_size
    # an id past the tokenizer (inside a padded model vocabulary: would train silently), honest report
    _rewrite_shard_with_ids(out, "shard-000001", [5, vocab + 1, 7])
    with pytest.raises(BuildError, match=rf"shard-000001: token id {vocab + 1} >= vocabulary size {vocab}"):
        merge(out)
    # the report lies (claims small ids): merge cannot know, the manifest is written ...
    _rewrite_shard_with_ids(out, "shard-000001", [5, vocab + 1, 7], report_max=9)
    manifest = merge(out)
    # ... but verify reads every id and names the sample
    proc = genlip("shards", "verify", out)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.splitlines()
    assert "shard-000001.bin: sample 1 (key '000000101')" in line and f"token id {vocab + 1}" in line
    # ... and the loader replaces the sample (counted, logged): training never sees the id
    import logging

    from genlip_megatron.data.image_geometry import ImageGeometry
    from genlip_megatron.data.loader import PackedLoader
    from genlip_megatron.data.sample_sequence import TextLayout

    dataset = open_dataset(out)
    tokenizer = load_tokenizer(dataset.manifest)  # the manifest (lying) passes the cheap check
    loader = PackedLoader(dataset, ImageGeometry(patch_size=8, image_size=32), TextLayout((1,), (2,), 64), 256,
                          4, 1, 0, 1, seed=0, decoder="reference", max_bad_fraction=0.5, vocab_size=tokenizer.vocab_size)
    with caplog.at_level(logging.WARNING, logger="genlip_megatron.data.loader"):
        batches = [b for _, b in zip(range(24), loader)]
    assert max(int(b.tokens.max()) for b in batches) < vocab
    assert loader.bad_samples >= 1 and "outside the tokenizer's vocabulary" in caplog.text
    # an honest manifest entry is refused when the dataset is opened against its tokenizer, O(shards)
    data = json.load(open(os.path.join(out, "manifest.json")))
    data["shards"][1]["max_token_id"] = vocab + 1
    json.dump(data, open(os.path.join(out, "manifest.json"), "w"))
    with pytest.raises(ShardError, match=f"token id {vocab + 1} is outside the tokenizer's vocabulary of {vocab}"):
        load_tokenizer(open_dataset(out).manifest)
    assert manifest.shards[1].max_token_id == 9


def test_negative_token_id_is_named_by_verify(tmp_path):
    out, _ = _dataset(tmp_path, tars=1)
    _rewrite_shard_with_ids(out, "shard-000000", [3, -2], report_max=9)
    merge(out)
    proc = genlip("shards", "verify", out)
    assert proc.returncode == 1 and "sample 1" in proc.stderr and "token id -2" in proc.stderr


# --- the dataset's tokenizer.json ------------------------------------------------------------------------

def _other_tokenizer(path):
    train_bpe(["completely different words here"] * 20, 300, str(path), min_frequency=1)
    return str(path)


@pytest.mark.parametrize("swap", ["other-tokenizer", "fifo", "dev-zero", "not-json", "missing"])
def test_swapped_tokenizer_fails_verify_and_open_in_one_line(tmp_path, swap):
    out, _ = _dataset(tmp_path, tars=1)
    merge(out)
    target = os.path.join(out, "tokenizer.json")
    os.unlink(target)
    if swap == "other-tokenizer":
        _other_tokenizer(target)
    elif swap == "fifo":
        os.mkfifo(target)
    elif swap == "dev-zero":
        os.symlink("/dev/zero", target)
    elif swap == "not-json":
        open(target, "w").write("{" * 5000)
    proc = genlip("shards", "verify", out)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("error: ") and "tokenizer.json" in line
    if swap == "other-tokenizer":
        assert "is not the tokenizer the shards were made with" in line
    with pytest.raises((ShardError, ValueError), match="tokenizer.json"):
        load_tokenizer(open_dataset(out).manifest)
    shown = genlip("shards", "show", out, "0", "--out", str(tmp_path / "show"))
    assert shown.returncode == 2 and len(shown.stderr.splitlines()) == 1 and "tokenizer.json" in shown.stderr


# --- build flags --------------------------------------------------------------------------------------

NONSENSE_FLAGS = [
    (["--max-side", "0"], "--max-side"), (["--max-side", "-5"], "--max-side"),
    (["--max-side", "70000"], "--max-side"), (["--min-side", "0"], "--min-side"),
    (["--min-side", "100", "--max-side", "50"], "--min-side 100 > --max-side 50"),
    (["--max-pixels", "0"], "--max-pixels"), (["--jpeg-quality", "0"], "--jpeg-quality"),
    (["--jpeg-quality", "101"], "--jpeg-quality"), (["--max-caption-chars", "0"], "--max-caption-chars"),
    (["--max-caption-tokens", "-1"], "--max-caption-tokens"), (["--workers", "0"], "--workers"),
    (["--num-tasks", "0"], "number of tasks"), (["--task-index", "3", "--num-tasks", "2"], "task index 3"),
    (["--jsonl-lines-per-shard", "0"], "--jsonl-lines-per-shard"), (["--max-image-bytes", "0"], "--max-image-bytes"),
    (["--caption-mix", "1,x", "--caption-field", "a", "--caption-field", "b"], "--caption-mix"),
    (["--caption-mix", "nan,1", "--caption-field", "a", "--caption-field", "b"], "--caption-mix"),
    (["--caption-mix", "0,0", "--caption-field", "a", "--caption-field", "b"], "--caption-mix"),
    (["--caption-mix", "1,1,1", "--caption-field", "a", "--caption-field", "b"], "--caption-mix"),
]


@pytest.mark.parametrize("flags,named", NONSENSE_FLAGS, ids=[" ".join(f) for f, _ in NONSENSE_FLAGS])
def test_nonsense_build_flags_are_refused_in_one_line_before_anything_is_written(tmp_path, capsys, flags, named):
    write_synthetic_tar(str(tmp_path / "a.tar"), 3)
    out = tmp_path / "out"
    rc = main(["shards", "build", str(tmp_path / "a.tar"), "--out", str(out), "--tokenizer", tokenizer_file(),
               "--no-progress", *flags])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("genlip shards: error: ") and named in err, err
    assert not out.exists()


# --- two builds into one folder ------------------------------------------------------------------------

def _build_at_barrier(barrier, inputs, out, max_side, results):
    barrier.wait()
    try:
        settings = BuildSettings(image=ImageSettings(max_side=max_side))
        run_build([inputs], out, tokenizer_file(), settings, "p", progress=False)
        results.put("built")
    except BuildError as exc:
        results.put(f"refused: {exc}")


@pytest.mark.parametrize("second_max_side", [16, None])
def test_two_builds_started_at_once_into_one_folder_leave_one_consistent_build(tmp_path, second_max_side):
    """Different settings: exactly one build wins the folder, the other is refused in one line; the
    same settings (a SLURM task started twice): both finish, each unit built once (a lock per unit)."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for t in range(4):
        write_synthetic_tar(str(inputs / f"{t}.tar"), 40, first=100 * t)
    out = str(tmp_path / "out")
    tokenizer_file()  # made before the fork
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(2), context.Queue()
    procs = [context.Process(target=_build_at_barrier, args=(barrier, str(inputs), out, side, results))
             for side in (None, second_max_side)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
        assert p.exitcode == 0
    outcomes = sorted(results.get(timeout=10) for _ in procs)
    if second_max_side is None:
        assert outcomes == ["built", "built"]
    else:
        assert outcomes[0] == "built" and outcomes[1].startswith("refused: ") and "other settings" in outcomes[1]
        assert "\n" not in outcomes[1]
    manifest = merge(out, full_verify=True)
    assert manifest.num_samples == 160
    proc = genlip("shards", "verify", out)
    assert proc.returncode == 0, proc.stderr
    winner = json.load(open(os.path.join(out, "plan.json")))["settings"]["image"]["max_side"]
    reference = str(tmp_path / "reference")
    run_build([str(inputs)], reference, tokenizer_file(), BuildSettings(image=ImageSettings(max_side=winner)), "p",
              progress=False)
    ours = {k: v for k, v in snapshot(out).items() if k.startswith("shard-")}
    theirs = {k: v for k, v in snapshot(reference).items() if k.startswith("shard-")}
    assert ours == theirs  # byte-identical to one uninterrupted build


def test_a_unit_built_with_other_settings_is_never_merged_and_a_rerun_repairs_it(tmp_path):
    out, _ = _dataset(tmp_path, "a")
    other, _ = _dataset(tmp_path, "b", settings=BuildSettings(image=ImageSettings(max_side=16)))
    for suffix in (".bin", ".idx", ".report.json"):  # a unit of the other build lands in this folder
        shutil.copy(os.path.join(other, "shard-000001" + suffix), os.path.join(out, "shard-000001" + suffix))
    before = snapshot(out)
    with pytest.raises(BuildError, match=r"shard-000001: built with other settings than plan.json"):
        merge(out)
    assert snapshot(out) == before  # nothing written, nothing lost
    with pytest.raises(BuildError, match="other settings"):  # a second build with other settings: refused
        run_build([str(tmp_path / "a-in")], out, tokenizer_file(), BuildSettings(image=ImageSettings(max_side=16)),
                  "Describe.", progress=False)
    assert snapshot(out) == before
    rerun = run_build([str(tmp_path / "a-in")], out, tokenizer_file(), BuildSettings(), "Describe.", progress=False)
    assert rerun["totals"]["skipped"] == 1  # shard-000000 kept; shard-000001 rebuilt
    merge(out, full_verify=True)
    assert genlip("shards", "verify", out).returncode == 0


# --- hostile manifests -------------------------------------------------------------------------------

def _manifest_cases(path):
    """name -> how to spoil ds/manifest.json (given its parsed content)."""
    def write(obj):
        os.unlink(path)
        with open(path, "w") as f:
            f.write(obj if isinstance(obj, str) else json.dumps(obj))

    def replace_with(make):
        os.unlink(path)
        make(path)

    def edit(change):
        data = json.load(open(path))
        change(data)
        write(data)

    return {
        "nested-100k": lambda: write("[" * 100_000 + "]" * 100_000),
        "fifo": lambda: replace_with(os.mkfifo),
        "dev-zero": lambda: replace_with(lambda p: os.symlink("/dev/zero", p)),
        "truncated": lambda: write(open(path).read()[:50]),
        "a-list": lambda: write([1, 2]),
        "shard-outside": lambda: edit(lambda d: d["shards"][0].update(name="../../etc/passwd")),
        "absolute-tokenizer": lambda: edit(lambda d: d["tokenizer"].update(file="/etc/passwd")),
        "shards-not-a-list": lambda: edit(lambda d: d.update(shards=7)),
        "count-a-string": lambda: edit(lambda d: d["shards"][0].update(num_samples="12")),
        "unknown-key": lambda: edit(lambda d: d["shards"][0].update(evil=1)),
    }


@pytest.mark.parametrize("case", sorted(_manifest_cases("x")))
def test_hostile_manifest_is_refused_in_one_line_by_info_verify_and_open(tmp_path, case):
    out, _ = _dataset(tmp_path, tars=1)
    merge(out)
    _manifest_cases(os.path.join(out, "manifest.json"))[case]()
    for action in ("info", "verify"):
        proc = genlip("shards", action, out)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        (line,) = proc.stderr.splitlines()
        assert line.startswith(f"genlip shards: error: {out}/manifest.json: "), line
    with pytest.raises(ShardError, match="manifest.json"):
        open_dataset(out)
