"""The package's shape: one-way layers (import-linter), one owner of run paths, the root API, precision."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import torch

import jukebox_lite
from jukebox_lite.core.precision import autocast
from jukebox_lite.core.config import PriorConfig
from jukebox_lite.models.prior import Prior

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    """import-linter on the packages in `tree`, with the contract in its pyproject.toml."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=tree, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=300,
    )


def test_the_layers_depend_one_way():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    for name in ("jukebox_lite", "data_prep"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    conv = tmp_path / "jukebox_lite" / "nn" / "conv.py"
    conv.write_text(conv.read_text() + "\nfrom jukebox_lite.stages import sample  # noqa: an upward import\n")
    core = tmp_path / "jukebox_lite" / "core" / "errors.py"
    core.write_text(core.read_text() + "\nimport data_prep.ingest  # noqa: the library reaching into the data stage\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "0 kept, 2 broken" in result.stdout
    assert "jukebox_lite.nn.conv -> jukebox_lite.stages.sample" in result.stdout


# names of the run layout that only runs.py may join onto a path
RUN_PATH = re.compile(
    r'/ f?"(data|audio|vqvae|codes|samples|refiner|prior_level[^"]*|manifest\.jsonl|rejected\.jsonl|review\.html|'
    r'ratings\.csv|tb|eval\.json|config\.yaml|meta\.json|copies\.json|codes_level2\.npy|last\.pt)"'
)


def test_no_module_but_runs_spells_a_run_path():
    offenders = []
    for path in sorted([*(ROOT / "jukebox_lite").rglob("*.py"), *(ROOT / "data_prep").rglob("*.py")]):
        if path.name == "runs.py":
            continue
        offenders += [f"{path.relative_to(ROOT)}:{n}" for n, line in enumerate(path.read_text().splitlines(), 1) if RUN_PATH.search(line)]
    assert offenders == []
    assert RUN_PATH.search('folder = run_dir / "vqvae"')  # the pattern does find such a line


def test_models_never_turn_autocast_on():
    for path in sorted([*(ROOT / "jukebox_lite" / "models").rglob("*.py"), *(ROOT / "jukebox_lite" / "nn").rglob("*.py")]):
        for line in path.read_text().splitlines():
            if "autocast(" in line:
                assert "enabled=False" in line, f"{path.name}: {line.strip()}"  # only float32 islands


def test_precision_belongs_to_the_caller():
    """The prior runs in whatever precision its caller chose: bf16 under `bf16`, never under `float32`."""
    prior = Prior(PriorConfig(n_ctx=16, width=16, depth=1, heads=1, blocks=4, bins=8, labels=False))
    seen: list[torch.dtype] = []
    prior.prior.x_out.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    codes = torch.randint(0, 8, (2, 16))
    cpu = torch.device("cpu")
    for precision, expected in (("float32", torch.float32), ("bf16", torch.bfloat16), ("auto", torch.float32)):
        seen.clear()
        with autocast(cpu, precision):
            logits, metrics = prior(codes)
        assert seen == [expected], precision
        assert logits.dtype == torch.float32 and torch.isfinite(metrics["loss"])


def test_the_root_api(tmp_path):
    from jukebox_lite import Run, load_prior, load_vqvae, sample_codes
    from tests.helpers import save_vqvae, tiny_model

    assert set(jukebox_lite.__all__) >= {"load_vqvae", "load_prior", "load_refiner", "sample_codes", "refine", "Run"}
    save_vqvae(tmp_path, tiny_model())
    vq = load_vqvae(Run(tmp_path).vqvae.path)
    prior = Prior(PriorConfig(n_ctx=16, width=16, depth=1, heads=1, blocks=4, bins=vq.config.l_bins, labels=False))
    from jukebox_lite.core.checkpoint import save_checkpoint
    import dataclasses

    save_checkpoint(Run(tmp_path).prior(2).checkpoint, "prior", dataclasses.asdict(prior.cfg), prior.state_dict())
    loaded = load_prior(Run(tmp_path).prior(2).path)
    codes = sample_codes(loaded, 2, 16, generator=torch.Generator().manual_seed(0))
    assert codes.shape == (2, 16) and codes.max() < vq.config.l_bins
    audio = vq.decode_long(codes, level=2)
    assert audio.shape == (2, 1, 16 * vq.hop_lengths[2])


def test_importing_the_package_and_the_cli_does_not_import_torch():
    code = "import sys, jukebox_lite, jukebox_lite.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "False"


def fresh_python(code: str) -> subprocess.CompletedProcess:
    """`code` run by a new interpreter in the repository: its sys.modules holds only what the code imported."""
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def test_the_commands_start_without_the_slow_optional_imports():
    """torch's FSDP/DCP and scipy.signal (pyloudnorm) take ~4 s to import together, which every command paid
    at start-up; they load only where a command uses them (sharded training, loudness; demo-corpus
    synthesizes with scipy.signal)."""
    result = fresh_python(
        "import sys; from jukebox_lite.cli import STAGES, build_parser\n"
        "for stage in set(STAGES) - {'demo-corpus'}: build_parser(stage)\n"
        "print(' '.join(m for m in ('torch.distributed.fsdp', 'torch.distributed.checkpoint', 'scipy.signal') if m in sys.modules))"
    )
    assert result.stdout.strip() == "", f"imported at start-up: {result.stdout}"


def test_the_recipe_check_runs_without_torch():
    """The Makefile checks ARGS with `jukebox-lite recipe` before every stage: it reads YAML only."""
    result = fresh_python(
        "import sys; from jukebox_lite.cli import main\n"
        "assert main(['recipe', '--config', 'pipelines/demo.yaml', 'prior_level2.train.steps=5']) == 0\n"
        "print('torch' in sys.modules, file=sys.stderr)"
    )
    assert "steps: 5" in result.stdout and result.stderr.strip() == "False", result.stderr
