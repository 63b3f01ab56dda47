"""Every command line follows one pattern: flags -> a typed config -> checks -> the output claimed -> the
config saved beside the output -> the work; bad flags are one line and exit status 2."""
from __future__ import annotations

import ast
import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def command_modules() -> list[Path]:
    """Every file that runs a command line through fire (cli.fire_command, or fire.Fire in the benches)."""
    files = sorted((ROOT / "autoencoder").glob("*.py")) + sorted((ROOT / "latent_ops").glob("*.py")) \
        + sorted((ROOT / "latent_ops").glob("*/__main__.py")) + sorted((ROOT / "bench").glob("*.py"))
    return [f for f in files if f.name != "cli.py" and ("\n    fire.Fire(main)" in f.read_text()
                                                        or "\n    fire_command(main)" in f.read_text())]


def test_every_command_builds_a_config_dataclass_from_its_flags():
    loose = []
    for file in command_modules():
        tree = ast.parse(file.read_text())
        main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
        classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef) and n.name.endswith("Config")}
        imported = {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
        body = ast.unparse(main)
        uses = [c for c in classes | {n for n in imported if n.endswith("Config")} if c in body] or \
            [name for name in ("make_config", "config_for", "make_compose_config", "make_report_config",
                               "make_prior_config", "make_learn_config", "make_ship_config",
                               "make_evaluator_config", "make_atlas_config", "build_atlas", "report", "compose")
             if f"{name}(" in body]
        if not uses:
            loose.append(file.relative_to(ROOT).as_posix())
    assert len(command_modules()) >= 25 and loose == []


@pytest.fixture()
def run_copy(smoke_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    return run


def saved(file: Path) -> dict:
    assert file.exists(), file
    return json.loads(file.read_text())


def test_data_diagram_evaluate_samples_and_encode_save_their_configs(run_copy, folder_data, tmp_path, capsys):
    from autoencoder.data import main as data_main
    from autoencoder.diagram import main as diagram_main
    from autoencoder.evaluate import main as evaluate_main
    from autoencoder.samples import main as samples_main
    from latent_ops.encode import main as encode_main

    cache = tmp_path / "cache"
    data_main(data=str(folder_data), cache_dir=str(cache))
    assert saved(cache / "data-config.json")["data"] == str(folder_data)
    diagram_main(run=str(run_copy), out=str(tmp_path / "diagram"))
    assert saved(tmp_path / "diagram" / "diagram-config.json")["run"] == str(run_copy)
    evaluate_main(run=str(run_copy), data=str(folder_data), cache_dir=str(cache))
    assert saved(run_copy / "reconstruction-config.json")["batch_size"] == 500
    samples_main(run=str(run_copy), data=str(folder_data), cache_dir=str(cache), out=str(tmp_path / "grid.png"))
    assert saved(tmp_path / "grid-config.json")["seed"] == 0
    encode_main(run=str(run_copy), data=str(folder_data), cache_dir=str(cache))
    assert saved(run_copy / "encode-config.json")["run"] == str(run_copy)
    assert "wrote" in capsys.readouterr().out


def test_concepts_expression_and_showcase_save_their_configs(run_copy, folder_data, tmp_path, monkeypatch):
    from latent_ops.compose import compose
    from latent_ops.expression import main as expression_main
    from latent_ops.run_concepts import CONFIG_FILE
    from latent_ops.run_concepts import main as concepts_main
    from latent_ops.showcase import main as showcase_main

    cache = str(tmp_path / "cache")
    concepts_main(run=str(run_copy), data=str(folder_data), cache_dir=cache, max_clusters=3)
    assert saved(run_copy / CONFIG_FILE)["max_clusters"] == 3
    expression_main("horse+0.5*wings", out=str(tmp_path / "expressions"))
    (record,) = [saved(f) for f in (tmp_path / "expressions").glob("*.json")]
    assert record["config"]["expression"] == "horse+0.5*wings" and record["weights"] == {"horse": 1.0, "wings": 0.5}
    out = compose("horse", run=str(run_copy), data=str(folder_data), cache_dir=cache, n=4, refine_steps=1,
                  out=str(tmp_path / "composed"), quiet=True)
    assert saved(out / "config.json")["n"] == 4
    showcase_main(compose=str(out), marked="0,2", what="a horse")
    assert saved(out / "showcase-config.json")["marked"] == "0,2"


@pytest.mark.parametrize("module, flags, message", [
    ("autoencoder.data", dict(colour=1), "unknown flag(s) --colour"),
    ("autoencoder.diagram", dict(), "--run is required"),
    ("autoencoder.evaluate", dict(run="x", batch_size=0), "--batch_size must be between"),
    ("autoencoder.samples", dict(run="x", seed=float("nan")), "--seed must be a finite number"),
    ("latent_ops.encode", dict(batch_size=2.5), "--batch_size takes a whole number"),
    ("latent_ops.expression", dict(expression="horse+"), "ends too early"),
    ("latent_ops.showcase", dict(), "--compose is required"),
    ("latent_ops.run_concepts", dict(max_clusters=1), "--max_clusters must be between"),
])
def test_bad_flags_of_every_small_command_are_one_line(module, flags, message, capsys):
    import importlib

    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exit_info:
        main(**flags)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and err.count("\n") == 1, err


def test_a_bench_records_its_config_and_refuses_an_unknown_flag(folder_data, tmp_path, monkeypatch, capsys):
    sys.path.insert(0, str(ROOT / "bench"))
    import record
    from pca_floor import main as pca_main

    monkeypatch.setattr(record, "RECORDS", tmp_path)
    monkeypatch.setattr(record.write_record, "__defaults__", (tmp_path,))
    pca_main(data=str(folder_data), components="4", cache_dir=str(tmp_path / "cache"))
    written = saved(tmp_path / "pca_floor.json")
    assert written["config"]["components"] == "4" and written["config"]["data"] == str(folder_data)
    with pytest.raises(SystemExit):
        pca_main(components="4", colour=2)
    assert "unknown flag(s) --colour" in capsys.readouterr().err
