"""The code's shape, held by tests: inference never loads training code, functions fit on a screen,
the metrics stand alone."""
import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAINING_MODULES = {"autoencoder.train", "autoencoder.step", "autoencoder.losses", "autoencoder.checkpoint",
                    "autoencoder.config", "autoencoder.distributed", "autoencoder.train_evaluator",
                    "autoencoder.samples", "latent_ops.prior", "latent_ops.learn"}


def loaded_modules(module: str) -> set[str]:
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


def test_compose_loads_no_training_module():
    loaded = loaded_modules("latent_ops.compose")
    assert "latent_ops.compose" in loaded and "autoencoder.run_folder" in loaded
    assert not loaded & TRAINING_MODULES, sorted(loaded & TRAINING_MODULES)
    assert not {m.split(".")[0] for m in loaded} & {"sklearn", "torchvision", "umap"}  # over 2 s of imports


def test_reading_a_run_and_the_classifiers_load_no_training_module():
    for module in ("autoencoder.run_folder", "autoencoder.classifier", "latent_ops.trained_prior"):
        assert not loaded_modules(module) & TRAINING_MODULES, module


def test_the_metrics_import_nothing_from_the_project():
    tree = ast.parse((ROOT / "autoencoder" / "metrics.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {m for m in imported if m.split(".")[0] in ("autoencoder", "latent_ops", "bench")}


def long_functions(limit: int = 80) -> list[str]:
    found = []
    for folder in ("autoencoder", "latent_ops", "bench"):
        for file in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(file.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > limit:
                        found.append(f"{file.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_is_over_80_lines():
    assert long_functions() == []


def test_the_length_check_sees_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(90))
    tree = ast.parse(f"def long():\n{body}\n")
    node = tree.body[0]
    assert node.end_lineno - node.lineno + 1 > 80  # the measure long_functions uses
