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
                    "latent_ops.prior", "latent_ops.learn", "latent_ops.ship"}
INFERENCE_COMMANDS = ("latent_ops.compose", "latent_ops.edit", "latent_ops.explore.__main__", "latent_ops.atlas",
                      "latent_ops.report", "latent_ops.encode", "latent_ops.run_concepts", "autoencoder.diagram",
                      "autoencoder.evaluate", "autoencoder.samples")
SHARED_BY_TRAININGS = {"autoencoder.checkpoint": {"autoencoder.atomic", "autoencoder.cli", "autoencoder.run_folder"},
                       "autoencoder.schedule": set()}  # what each may import of the project


def loaded_modules(module: str) -> set[str]:
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


def test_compose_loads_no_training_module():
    loaded = loaded_modules("latent_ops.compose")
    assert "latent_ops.compose" in loaded and "autoencoder.run_folder" in loaded
    assert not loaded & TRAINING_MODULES, sorted(loaded & TRAINING_MODULES)
    assert not {m.split(".")[0] for m in loaded} & {"sklearn", "torchvision", "umap"}  # over 2 s of imports


def project_imports(file: Path) -> set[str]:
    tree = ast.parse(file.read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    return {n for n in names if n.split(".")[0] in ("autoencoder", "latent_ops")}


def test_no_inference_command_loads_a_training_module():
    for module in INFERENCE_COMMANDS:
        loaded = loaded_modules(module)
        assert module in loaded and not loaded & TRAINING_MODULES, (module, sorted(loaded & TRAINING_MODULES))


def test_the_machinery_the_trainings_share_imports_no_training():
    for module, allowed in SHARED_BY_TRAININGS.items():
        imported = project_imports(ROOT / (module.replace(".", "/") + ".py"))
        assert imported <= allowed, (module, sorted(imported - allowed))
    # the prior's training reaches the autoencoder's only through the shared modules, never its training code
    prior = project_imports(ROOT / "latent_ops" / "prior.py")
    assert not prior & (TRAINING_MODULES - set(SHARED_BY_TRAININGS)), sorted(prior & TRAINING_MODULES)


def test_no_public_function_or_class_is_defined_twice():
    defined: dict[str, list[str]] = {}
    for folder in ("autoencoder", "latent_ops"):
        for file in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.parse(file.read_text()).body:
                if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_") \
                        and node.name != "main":
                    defined.setdefault(node.name, []).append(str(file.relative_to(ROOT)))
    assert {name: files for name, files in defined.items() if len(files) > 1} == {}


def test_reading_a_run_and_the_classifiers_load_no_training_module():
    for module in ("autoencoder.run_folder", "autoencoder.classifier", "latent_ops.trained_prior"):
        assert not loaded_modules(module) & TRAINING_MODULES, module


def test_the_metrics_import_nothing_from_the_project():
    tree = ast.parse((ROOT / "autoencoder" / "metrics.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {m for m in imported if m.split(".")[0] in ("autoencoder", "latent_ops", "bench")}


def long_functions(limit: int = 80, root: Path = ROOT) -> list[str]:
    found = []
    for folder in ("autoencoder", "latent_ops", "bench"):
        for file in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(file.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > limit:
                        found.append(f"{file.relative_to(root)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_is_over_80_lines():
    assert long_functions() == []


def test_the_length_check_sees_a_long_function(tmp_path):
    (tmp_path / "latent_ops").mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(90))
    (tmp_path / "latent_ops" / "long.py").write_text(f"def short():\n    return 1\n\n\ndef long():\n{body}\n")
    assert long_functions(root=tmp_path) == ["latent_ops/long.py:5 long (91 lines)"]
    assert long_functions(limit=91, root=tmp_path) == []
