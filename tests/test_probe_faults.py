"""The faults a hostile probe of the commands found, each held by a test: no data loss, no exit 0 with a
wrong result, no traceback, and messages that say what was wrong and what to do."""
from __future__ import annotations

import errno
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from autoencoder.cli import ConfigError, UserError, claim_output, release_folder, run_cli
from autoencoder.run_folder import RunError, load_run
from tests.conftest import write_folders

ROOT = Path(__file__).resolve().parent.parent


def copy_run(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    return copy


# --- data loss ------------------------------------------------------------------------------------------------------

def test_ship_refuses_a_folder_it_did_not_make_the_run_and_its_parent(smoke_run, tmp_path):
    from latent_ops.ship import make_ship_config, ship

    run = copy_run(smoke_run, tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for out, message in ((mine, "not a shipped model"), (run, "the run being shipped"),
                         (tmp_path, "the run being shipped or holds it")):
        with pytest.raises(ConfigError, match=message):
            ship(make_ship_config(run=str(run), out=str(out)), progress=False)
    assert (mine / "notes.txt").read_text() == "keep me" and (run / "config.json").exists()


def test_the_evaluators_ship_folder_may_not_be_a_run(smoke_run, tmp_path):
    from autoencoder.train_evaluator import claim_ship_folder, make_evaluator_config

    run = copy_run(smoke_run, tmp_path)
    before = (run / "config.json").read_text()
    with pytest.raises(ConfigError, match="not empty and not a shipped classifier's output"):
        claim_ship_folder(make_evaluator_config(ship=str(run)))
    only_config = tmp_path / "only-config"
    only_config.mkdir()
    (only_config / "config.json").write_text(before)  # a training config alone: not a classifier's
    with pytest.raises(ConfigError, match="another command's config.json"):
        claim_ship_folder(make_evaluator_config(ship=str(only_config)))
    assert (run / "config.json").read_text() == before == (only_config / "config.json").read_text()


def test_compose_refuses_a_folder_holding_a_persons_marks(tmp_path):
    from latent_ops.compose import output_folder
    from latent_ops.compose_config import make_compose_config

    out = tmp_path / "counted"
    out.mkdir()
    (out / "scores.json").write_text("{}")
    (out / "marked.json").write_text('{"count": 49}')
    with pytest.raises(ConfigError, match="marked.json, a person's marks"):
        output_folder(make_compose_config(out=str(out)))
    assert json.loads((out / "marked.json").read_text()) == {"count": 49}


HOLD_LOCK = ("import sys, time; from pathlib import Path; from autoencoder.cli import lock_folder; "
             "lock_folder(Path(sys.argv[1])); print('locked', flush=True); time.sleep(60)")


@pytest.fixture()
def locked_elsewhere(tmp_path):
    """A folder that another process holds the writer's lock of."""
    folder = tmp_path / "busy"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "locked"
    yield folder
    holder.kill()
    holder.wait()


def test_a_second_writer_of_one_folder_is_refused(locked_elsewhere, tmp_path, folder_data, capsys):
    from autoencoder.train import main as train_main
    from latent_ops.compose import output_folder
    from latent_ops.compose_config import make_compose_config

    with pytest.raises(ConfigError, match="being written by another command"):
        claim_output(locked_elsewhere, None, "a test")
    with pytest.raises(ConfigError, match="being written by another command"):
        output_folder(make_compose_config(out=str(locked_elsewhere)))
    with pytest.raises(SystemExit):  # two trainings into one new --out
        train_main(preset="smoke", data=str(folder_data), cache_dir=str(tmp_path / "cache"), out=str(locked_elsewhere))
    assert "being written by another command" in capsys.readouterr().err
    assert not locked_elsewhere.exists()


def test_a_lock_is_released_when_its_command_is_done(tmp_path):
    folder = tmp_path / "done"
    claim_output(folder, None, "a test")
    release_folder(folder)
    out = subprocess.run([sys.executable, "-c", HOLD_LOCK.replace("time.sleep(60)", "pass"), str(folder)],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and "locked" in out.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no lock file left behind


def test_atlases_of_different_expressions_get_different_default_folders(tmp_path):
    from latent_ops.atlas import AtlasConfig, atlas_folder

    run = tmp_path / "run"
    folders = {atlas_folder(AtlasConfig(expression=e), run) for e in ("horse+wings", "horse+white", "horse:2+wings")}
    assert len(folders) == 3
    assert atlas_folder(AtlasConfig(out=str(tmp_path / "mine")), run) == tmp_path / "mine"


# --- exit 0 with a wrong result -------------------------------------------------------------------------------------

def test_a_named_class_the_data_lacks_is_refused_before_a_run_folder_is_made(folder_data, tmp_path, capsys):
    from autoencoder.train import main as train_main

    empty_ship = write_folders(tmp_path / "data")
    (empty_ship / "train" / "ship").mkdir()  # an empty class folder
    for data in (folder_data, empty_ship):
        out = tmp_path / f"run-{data.name}"
        with pytest.raises(SystemExit) as exit_info:
            train_main(preset="smoke", classes="horse,ship", data=str(data), cache_dir=str(tmp_path / "cache"),
                       out=str(out))
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert exit_info.value.code == 2 and len(errors) == 1 and "no train images of ship" in errors[0], err
        assert "Traceback" not in err
        assert not out.exists()


def test_uniqueness_against_other_data_than_the_runs_is_said(composed_run, folder_data, tmp_path, smoke_run, capsys):
    from autoencoder.data import DATA_FILE, data_checksums
    from latent_ops.compose import data_matches_run

    cache = str(smoke_run.parent / "cache")
    run = copy_run(composed_run, tmp_path)
    assert data_matches_run(run, str(folder_data), cache) is None  # nothing recorded
    (run / DATA_FILE).write_text(json.dumps(data_checksums(str(folder_data), cache)))
    assert data_matches_run(run, str(folder_data), cache) is True
    (run / DATA_FILE).write_text(json.dumps({"train": "0" * 64, "test": "0" * 64}))
    assert data_matches_run(run, str(folder_data), cache) is False
    assert "is not the data" in capsys.readouterr().out


# --- tracebacks -----------------------------------------------------------------------------------------------------

def test_nan_in_a_concept_file_is_refused_where_it_enters(composed_run, tmp_path):
    from latent_ops.run_concepts import DENSITIES_FILE, DIRECTIONS_FILE, load_concepts

    run = copy_run(composed_run, tmp_path)
    directions = json.loads((run / DIRECTIONS_FILE).read_text())
    directions["wings"]["step"] = float("nan")
    (run / DIRECTIONS_FILE).write_text(json.dumps(directions))
    with pytest.raises(RunError, match="wings step must be a finite number"):
        load_concepts(run)
    (run / DIRECTIONS_FILE).write_text((composed_run / DIRECTIONS_FILE).read_text())
    with np.load(run / DENSITIES_FILE) as saved:
        arrays = {k: saved[k] for k in saved.files}
    arrays["direction/wings"] = np.full_like(arrays["direction/wings"], np.nan)
    np.savez(run / DENSITIES_FILE, **arrays)
    with pytest.raises(RunError, match="direction/wings holds NaN"):
        load_concepts(run)


def test_a_nan_feature_cache_is_computed_again(tmp_path):
    from autoencoder.atomic import save_tensors
    from latent_ops.report import cached_features

    class Judge:
        def features(self, images):
            return torch.ones(len(images), 4)

    images = torch.zeros(6, 3, 32, 32, dtype=torch.uint8)
    first = cached_features(Judge(), tmp_path / "no-evaluator", images, "test", str(tmp_path))
    (file,) = tmp_path.glob("features-test-*.safetensors")
    save_tensors({"features": torch.full((6, 4), float("nan"))}, file)
    again = cached_features(Judge(), tmp_path / "no-evaluator", images, "test", str(tmp_path))
    assert torch.equal(first, again) and again.isfinite().all()


def test_a_huge_refinement_step_stays_finite(smoke_run):
    from latent_ops.refine import refine_codes

    nets = load_run(smoke_run, device="cpu").nets
    z0 = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    z, history = refine_codes(nets, z0, steps=50, step_size=100.0, anchor=1.0)
    assert z.isfinite().all() and all(np.isfinite(history))
    assert (z - z0).norm(dim=1).max() <= 50 * 0.25 * 4 + 1e-4  # each step at most 0.25 sqrt(D)


def test_an_unwritable_or_full_output_is_one_line_before_the_work(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        claim_output(blocker / "out", None, "a test")

    def read_only(self, data):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "write_bytes", read_only)
    with pytest.raises(ConfigError, match="cannot write in .*Read-only file system"):
        claim_output(tmp_path / "out", None, "a test")
    monkeypatch.undo()

    def full_disk():
        raise OSError(errno.ENOSPC, "No space left on device", "outputs/x.png")

    with pytest.raises(SystemExit) as exit_info:
        run_cli(full_disk)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert "outputs/x.png: No space left on device; free some space" in err


# --- unclear messages -----------------------------------------------------------------------------------------------

def test_a_bank_of_random_bytes_is_named_without_a_word_about_pickles(composed_run, tmp_path):
    from latent_ops.encode import BANK_FILE, load_bank

    run = copy_run(composed_run, tmp_path)
    (run / BANK_FILE).write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(RunError) as error:
        load_bank(run)
    assert "not an npz archive" in str(error.value) and "pickle" not in str(error.value)
    np.savez(run / BANK_FILE, train_codes=np.array([object()], dtype=object))
    with pytest.raises(RunError, match="holds pickled objects, which this project never loads"):
        load_bank(run)


class Planted:
    def __reduce__(self):
        return (print, ("a planted pickle ran",))


def test_a_planted_pickle_in_a_training_state_is_named_in_whole_words(tmp_path, capsys):
    from autoencoder.checkpoint import load_train_state

    file = tmp_path / "train_state.pt"
    file.write_bytes(pickle.dumps({"step": 1, "x": Planted()}))
    with pytest.raises(RunError) as error:
        load_train_state(file)
    message = str(error.value)
    assert "a planted pickle ran" not in capsys.readouterr().out
    assert message.startswith(f"{file} is damaged") and message.endswith("it cannot be resumed from; start a new run")
    try:
        torch.load(file, weights_only=True)
    except Exception as refusal:  # what torch says, in full
        said = " ".join(str(refusal).split())
    reason = message[message.index("(") + 1:message.rindex(")")]
    kind, _, words = reason.partition(": ")
    assert kind and said.startswith(words) and (words == said or said[len(words)] == " ")  # whole words only


def test_a_foreign_config_is_not_a_run_config(smoke_run, tmp_path):
    from autoencoder.cli import save_config
    from latent_ops.compose_config import ComposeConfig

    run = copy_run(smoke_run, tmp_path)
    save_config(ComposeConfig(), run / "config.json")
    with pytest.raises(RunError, match="is not a run config"):
        load_run(run)


# --- small data, the shipped prior ------------------------------------------------------------------------------------

def test_a_report_on_too_little_data_says_so_in_one_line(smoke_run, tiny_evaluator, tmp_path, capsys):
    from latent_ops.report import main as report_main

    small = tmp_path / "small"
    for split in ("train", "test"):
        for name in ("bird", "cat", "horse"):
            (small / split / name).mkdir(parents=True)
    for split in ("train", "test"):  # one image a split
        Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(small / split / "horse" / "0000.png")
    with pytest.raises(SystemExit) as exit_info:
        report_main(run=str(smoke_run), data=str(small), cache_dir=str(tmp_path / "cache"), out=str(tmp_path / "r"),
                    evaluator=str(tiny_evaluator[0]))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "too small for a report" in err, err


def test_the_prior_of_a_shipped_model_is_not_trained_further_but_says_how_to_train_one(smoke_run, tmp_path):
    from latent_ops.prior import make_prior_config, train_prior

    run = copy_run(smoke_run, tmp_path)
    prior = run / "prior"
    prior.mkdir()
    for name in ("config.json", "source.json", "model.safetensors"):
        (prior / name).write_text("{}")
    with pytest.raises(ConfigError, match="shipped without its training state.*pass --out NEW_FOLDER"):
        train_prior(make_prior_config(run=str(run)), progress=False)


def test_every_user_error_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: (_ for _ in ()).throw(UserError("what was wrong; what to do")))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: what was wrong; what to do\n"
