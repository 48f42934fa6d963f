"""One command-line grammar: --run is the run folder, --out a folder, --device the same choice everywhere."""

from __future__ import annotations

import argparse

import pytest
import torch

from jukebox_lite import cli

# commands that compute on a device (the rest read or write files only)
COMPUTING = {"encode", "eval-vqvae", "eval-refiner", "train-vqvae", "train-prior", "train-refiner", "refine", "sample",
             "separate", "prepare"}


def options(stage: str) -> dict[str, argparse.Action]:
    parser = cli.build_parser(stage)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[stage]
    return {opt: action for action in sub._actions for opt in action.option_strings}


@pytest.mark.parametrize("stage", sorted(cli.STAGES))
def test_every_command_speaks_the_same_grammar(stage):
    found = options(stage)
    assert not {"--json", "--in", "--input", "--output"} & set(found), "outputs go to --out FOLDER, inputs are positional"
    if "--out" in found:
        assert "folder" in found["--out"].help, f"{stage}: --out names a folder"
    if "--run" in found:
        assert found["--run"].required and "run folder" in found["--run"].help
    if stage in COMPUTING:
        assert set(found["--device"].choices) == {"auto", "cpu", "cuda"}
    else:
        assert "--device" not in found


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
def test_asking_for_cuda_without_one_is_one_clear_line(tmp_path, capsys):
    assert cli.main(["encode", "--run", str(tmp_path), "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "jukebox-lite encode: error: --device is cuda but no CUDA GPU is visible; use auto or cpu."
