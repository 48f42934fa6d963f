"""The package's shape: one-way layers (import-linter), one owner of run paths, the root API, precision."""

from __future__ import annotations

import ast
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


def root_api_uses(path: Path, package: str) -> list[str]:
    """Where the module at `path` (in `package`) reaches the lazy root API (`from jukebox_lite import Run`,
    `from .. import Run`, `jukebox_lite.Run`): import-linter cannot see through it, so a layer could
    import upward at run time unseen. Inside the package only submodules are imported."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            module = node.module if node.level == 0 else ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            if module == "jukebox_lite" and {alias.name for alias in node.names} & set(jukebox_lite.__all__):
                found.append(f"{path}:{node.lineno}")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "jukebox_lite":
            if node.attr in jukebox_lite.__all__:
                found.append(f"{path}:{node.lineno}")
    return found


def package_of(path: Path) -> str:
    """The package a module file belongs to, as a relative import inside it resolves."""
    return ".".join(path.relative_to(ROOT).parent.parts)


def test_no_module_of_the_package_uses_the_root_api(tmp_path):
    offenders = []
    for path in sorted([*(ROOT / "jukebox_lite").rglob("*.py"), *(ROOT / "data_prep").rglob("*.py")]):
        if path != ROOT / "jukebox_lite" / "__init__.py":  # it defines the root API (and shows it in its docstring)
            offenders += root_api_uses(path, package_of(path))
    assert offenders == []
    planted = tmp_path / "conv.py"  # the check does find each way of reaching it
    for source, line in (("from jukebox_lite import Run", 1), ("from .. import Run, core", 1), ("import jukebox_lite\nx = jukebox_lite.Run", 2)):
        planted.write_text(source + "\n")
        assert root_api_uses(planted, "jukebox_lite.nn") == [f"{planted}:{line}"], source
    planted.write_text("from jukebox_lite import runs\nfrom .. import core\n")  # submodules are fine
    assert root_api_uses(planted, "jukebox_lite.nn") == []


# names of the run layout that only runs.py may join onto a path ({} stands for an f-string's value)
RUN_NAME = re.compile(
    r"(data|audio|vqvae|codes|samples|refiner|prior_level.*|manifest\.jsonl|rejected\.jsonl|review\.html|"
    r"ratings\.csv|tb|eval\.json|config\.yaml|meta\.json|copies\.json|codes_level2\.npy|last\.pt)"
)


def literal_text(node: ast.AST) -> str | None:
    """The text of a string literal or an f-string (its values as {}), else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(part.value if isinstance(part, ast.Constant) else "{}" for part in node.values)
    return None


def joined_parts(node: ast.AST) -> list[ast.AST]:
    """What a path expression joins onto a base: `base / part`, `Path(base, part)`, `base.joinpath(part)`,
    `os.path.join(base, part)`."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        return [node.right]
    if isinstance(node, ast.Call):
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if name == "joinpath":
            return node.args
        if name in ("Path", "PurePath", "join"):
            return node.args[1:]
    return []


def run_paths_spelled(path: Path) -> list[str]:
    return [
        f"{path}:{node.lineno}"
        for node in ast.walk(ast.parse(path.read_text()))
        for part in joined_parts(node)
        if (text := literal_text(part)) is not None and RUN_NAME.fullmatch(text)
    ]


def test_no_module_but_runs_spells_a_run_path(tmp_path):
    offenders = []
    for path in sorted([*(ROOT / "jukebox_lite").rglob("*.py"), *(ROOT / "data_prep").rglob("*.py")]):
        if path.name != "runs.py":
            offenders += run_paths_spelled(path)
    assert offenders == []
    planted = tmp_path / "stage.py"  # the check does find each way of spelling one
    for source in ('run_dir / "vqvae"', 'run_dir / f"prior_level{level}"', 'Path(run_dir, "codes")', 'run_dir.joinpath("tb")',
                   'os.path.join(run_dir, "samples")'):
        planted.write_text(f"folder = {source}\n")
        assert run_paths_spelled(planted) == [f"{planted}:1"], source
    planted.write_text('folder = run.vqvae.path / "notes.txt"\nname = "vqvae"\n')  # other names, and no join
    assert run_paths_spelled(planted) == []


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
