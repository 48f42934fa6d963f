"""Copy detector: a training excerpt planted in generated codes is found; novel codes are not flagged."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from jukebox_lite.cli import main
from jukebox_lite.algorithms.codes import CodesCorpus
from jukebox_lite.stages.encode import encode_run
from jukebox_lite.core.config import CopiesConfig
from jukebox_lite.algorithms.copies import CorpusIndex, longest_tolerant_run, ngram_hashes
from jukebox_lite.stages.check_copies import check
from jukebox_lite.core.errors import UserError
from jukebox_lite.runs import Run
from tests.helpers import make_run, save_vqvae, varied_vqvae

# the tiny test VQ-VAE runs at 16 kHz with a top hop of 8: 2000 top-level tokens per second
SETTINGS = CopiesConfig(ngram=6, tolerance=0.15, min_seeds=3, report_seconds=0.1, flag_seconds=0.4)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Codes of three synthesized files from a tiny VQ-VAE whose codebooks were set from encoder outputs
    (as training starts), so the codes are as varied as music's: an untrained codebook gives one code."""
    run = make_run(tmp_path_factory.mktemp("copies"), seconds=(1.3, 1.6, 2.1))
    save_vqvae(run, varied_vqvae())
    encode_run(run)
    return run, CodesCorpus(run / "codes")


@pytest.fixture
def own_run(corpus, tmp_path) -> Path:
    """A private copy of the corpus's run for a test that writes samples into it: the module's run stays
    as built, whatever order the tests run in."""
    return Path(shutil.copytree(corpus[0], tmp_path / "run"))


def novel_codes(corpus: CodesCorpus, length: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, corpus.bins, length)


def plant(generated: np.ndarray, excerpt: np.ndarray, at: int, changed: float, seed: int) -> np.ndarray:
    """Copy `excerpt` into `generated` at `at`, with a share `changed` of its tokens re-drawn."""
    rng = np.random.default_rng(seed)
    out = generated.copy()
    copy = excerpt.astype(np.int64).copy()
    flips = rng.random(copy.size) < changed
    copy[flips] = (copy[flips] + rng.integers(1, 16, flips.sum())) % 16
    out[at : at + copy.size] = copy
    return out


def test_planted_excerpt_is_found_with_file_and_position(corpus):
    run, codes = corpus
    index = CorpusIndex(codes, SETTINGS)
    source = codes.file_codes(2, level=2)
    excerpt = source[700:1900]  # 0.6 s of the third file
    generated = plant(novel_codes(codes, 6000, seed=1), excerpt, at=2500, changed=0.08, seed=2)

    found = index.matches(generated)
    assert found, "the planted excerpt was not found"
    best = found[0]
    assert best.file_id == codes.files[2]["id"]
    assert best.offset_seconds == pytest.approx(2500 / 2000, abs=0.01)
    assert best.training_offset_seconds == pytest.approx(700 / 2000, abs=0.01)
    assert best.seconds == pytest.approx(1200 / 2000, abs=0.03)
    assert 0.85 <= best.score < 1.0


def test_novel_codes_are_not_flagged(corpus):
    run, codes = corpus
    index = CorpusIndex(codes, SETTINGS)
    for seed in range(3):
        found = index.matches(novel_codes(codes, 6000, seed=10 + seed))
        assert all(m.seconds < SETTINGS.flag_seconds for m in found)


def test_the_corpus_commonest_patterns_are_no_evidence(corpus):
    run, codes = corpus
    index = CorpusIndex(codes, SETTINGS)
    tokens = np.asarray(codes.level(2)).astype(np.int64)
    commonest = np.bincount(tokens).argmax()
    loop = np.tile(tokens[:3], 2000)  # a three-token figure repeated: what a stuck prior writes
    assert index.matches(np.full(6000, commonest)) == []
    assert all(m.seconds < SETTINGS.flag_seconds for m in index.matches(loop))


def test_check_copies_command_writes_reports_and_flags(corpus, own_run):
    run, (_, codes) = own_run, corpus
    for name, generated in {
        "copied": plant(novel_codes(codes, 5000, 3), codes.file_codes(1, 2)[100:1500], at=400, changed=0.05, seed=4),
        "novel": novel_codes(codes, 5000, 5),
    }.items():
        (run / "samples" / name).mkdir(parents=True, exist_ok=True)
        np.save(Run(run).sample(name).codes, generated.astype(np.int16))
    overrides = [f"copies.{k}={v}" for k, v in vars(SETTINGS).items()]
    assert main(["check-copies", "--run", str(run), *overrides]) == 0
    copied = json.loads((run / "samples/copied/copies.json").read_text())
    novel = json.loads((run / "samples/novel/copies.json").read_text())
    assert copied["flagged"] and copied["matches"][0]["training_file"]["id"] == codes.files[1]["id"]
    assert copied["matches"][0]["detector"] == "tokens" and (run / "copies" / "audio_index.npz").is_file()
    assert not novel["flagged"]


def test_longest_tolerant_run_and_hashes():
    equal = np.array([1, 1, 0, 1, 1, 1, 1, 0, 0, 0, 1, 1], bool)
    assert longest_tolerant_run(equal, tolerance=0.0) == (3, 7)
    assert longest_tolerant_run(equal, tolerance=0.2) == (0, 7)  # one miss in seven
    assert longest_tolerant_run(np.zeros(5, bool), tolerance=0.1) == (0, 0)
    tokens = np.array([3, 1, 4, 1, 5, 3, 1, 4])
    hashes = ngram_hashes(tokens, 3)
    assert hashes.shape == (6,) and hashes[0] == hashes[5] and len(set(hashes.tolist())) == 5


def test_no_samples_is_a_clear_error(corpus, tmp_path):
    run, _ = corpus
    (tmp_path / "codes").symlink_to(run / "codes")
    with pytest.raises(UserError, match="make sample"):
        check(tmp_path, SETTINGS)


def test_a_damaged_sample_codes_file_is_named_in_one_line(corpus, own_run, capsys):
    run, (_, codes) = own_run, corpus
    folder = Run(run).sample("broken")
    folder.path.mkdir(parents=True, exist_ok=True)
    for content, reason in ((b"\x93NUMPY garbage", "is not a codes file"),
                            (None, f"does not hold top-level codes (integers in [0, {codes.bins}))")):
        if content is None:
            np.save(folder.codes, np.array([0.5, 1e9]))  # floats, out of range: not what sample writes
        else:
            folder.codes.write_bytes(content)
        assert main(["check-copies", "--run", str(run)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and reason in err and "broken" in err, err
