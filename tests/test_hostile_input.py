"""Hostile input by class, every command run as a real process (``python -m ...``), so that the command line's own
parsing is what is tested. Each row asserts exit status 2, one line on stderr that names the input and what to do,
no traceback, and that every file that existed before is unchanged (and nothing was written through a link)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from test_help import command_modules

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "models" / "pegasus-cifar10"


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file and link under ``roots``: its bytes' hash, or where the link points."""
    found = {}
    for root in roots:
        paths = [root, *root.rglob("*")] if root.is_dir() and not root.is_symlink() else [root]
        for path in paths:
            if path.is_symlink():
                found[str(path)] = "link:" + os.readlink(path)
            elif path.is_file():
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            elif path.is_dir():
                found[str(path)] = "dir"
    return found


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def refused(done: subprocess.CompletedProcess, *words: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stdout[-500:], done.stderr[-500:])
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


# --- output folders: foreign (also when it holds only hidden files), a link, a planted lock link ------------------

OUT_COMMANDS = {  # the commands that claim an --out folder, with the flags that reach the claim quickly
    "compose": ["-m", "latent_ops.compose", "horse+wings", "--run", str(SHIPPED), "--data", "no-data"],
    "edit": ["-m", "latent_ops.edit", "--run", str(SHIPPED), "--start", "test:1"],
    "atlas": ["-m", "latent_ops.atlas", "--run", str(SHIPPED), "--data", "no-data"],
    "learn": ["-m", "latent_ops.learn", "pegasus2", "--run", "RUN_COPY"],
    "report": ["-m", "latent_ops.report", "--run", str(SHIPPED), "--data", "no-data"],
    "train": ["-m", "autoencoder.train", "--preset", "smoke", "--data", "no-data"],
    "train_evaluator": ["-m", "autoencoder.train_evaluator", "--data", "no-data"],
    "prior": ["-m", "latent_ops.prior", "--run", "RUN_COPY", "--data", "no-data"],
    "ship": ["-m", "latent_ops.ship", "--run", "RUN_COPY", "--data", "no-data"],
}


@pytest.fixture(scope="module")
def run_copy(tmp_path_factory) -> Path:
    """A copy of the shipped model that a command may be pointed at without risk to the committed one."""
    copy = tmp_path_factory.mktemp("model") / "pegasus-cifar10"
    shutil.copytree(SHIPPED, copy)
    return copy


def command_for(name: str, run_copy: Path) -> list[str]:
    return [str(run_copy) if a == "RUN_COPY" else a for a in OUT_COMMANDS[name]]


@pytest.mark.parametrize("name", sorted(OUT_COMMANDS))
def test_a_folder_with_only_hidden_files_is_not_replaced(name, run_copy, tmp_path):
    out = tmp_path / "mine"
    (out / ".git").mkdir(parents=True)
    (out / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (out / ".env").write_text("SECRET=1\n")
    before = snapshot(tmp_path, run_copy)
    refused(run(*command_for(name, run_copy), "--out", str(out)), str(out), ".env", "nothing was written")
    assert snapshot(tmp_path, run_copy) == before


@pytest.mark.parametrize("name", sorted(OUT_COMMANDS))
def test_an_output_link_is_never_replaced_or_followed(name, run_copy, tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "out"
    link.symlink_to(target)
    before = snapshot(tmp_path, run_copy)
    refused(run(*command_for(name, run_copy), "--out", str(link)), str(link), "link")
    assert snapshot(tmp_path, run_copy) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], "no hidden leftovers"


@pytest.mark.parametrize("name", sorted(OUT_COMMANDS))
def test_a_planted_lock_link_is_never_written_through(name, run_copy, tmp_path):
    victim = tmp_path / "victim.txt"
    (tmp_path / ".out.lock").symlink_to(victim)
    before = snapshot(tmp_path, run_copy)
    refused(run(*command_for(name, run_copy), "--out", str(tmp_path / "out")), ".out.lock", "link")
    assert not victim.exists(), "a file was created where the planted link points"
    assert snapshot(tmp_path, run_copy) == before


def run_read_only(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """A command run while ``folder`` is read-only: by its mode for a user; for root, whom modes do not stop, by a
    read-only bind mount in a mount namespace of the command's own."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            return run(*args)
        finally:
            folder.chmod(0o755)
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" || exit 97; exec "$@"'
    done = subprocess.run(["unshare", "-m", "sh", "-c", script, str(folder), sys.executable, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    if done.returncode == 97:
        pytest.skip(f"root cannot make a read-only folder on this machine (no mount namespace): {done.stderr[-200:]}")
    return done


@pytest.mark.parametrize("name", sorted(OUT_COMMANDS))
def test_a_read_only_folder_is_said_before_anything_is_computed(name, run_copy, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    before = snapshot(tmp_path, run_copy)
    refused(run_read_only(locked, *command_for(name, run_copy), "--out", str(locked / "out")), str(locked),
            "choose a folder you can write to")
    assert snapshot(tmp_path, run_copy) == before


# --- flags: given twice, unknown, --help (every command) ------------------------------------------------------------

def first_flag(module: str) -> str:
    usage = run("-m", module, "--help").stdout
    return next(line.split()[0] for line in usage.splitlines() if line.startswith("  --"))


def test_every_command_refuses_a_flag_given_twice():
    modules = command_modules()
    with ThreadPoolExecutor(max_workers=2) as pool:
        flags = dict(zip(modules, pool.map(first_flag, modules)))
        answers = dict(zip(modules, pool.map(lambda m: run("-m", m, flags[m], "1", flags[m], "2"), modules)))
    for module, done in answers.items():
        refused(done, f"{flags[module]} is given twice", "once")


def test_every_command_refuses_an_unknown_flag():
    modules = command_modules()
    with ThreadPoolExecutor(max_workers=2) as pool:
        answers = dict(zip(modules, pool.map(lambda m: run("-m", m, "--no_such_flag", "1"), modules)))
    for module, done in answers.items():
        refused(done, "--no_such_flag", "known flags")


# --- files a command reads: unknown keys in a recipe --------------------------------------------------------------

def test_an_unknown_recipe_key_is_refused_with_the_near_name(run_copy, tmp_path):
    recipe = json.loads((run_copy / "compose.json").read_text())
    recipe["refine_topp"] = recipe.pop("refine_top")
    (run_copy / "compose.json").write_text(json.dumps(recipe))
    try:
        before = snapshot(run_copy)
        refused(run("-m", "latent_ops.compose", "--run", str(run_copy), "--data", "no-data", "--out",
                    str(tmp_path / "c")), "compose.json", "'refine_topp'", "did you mean 'refine_top'")
        assert snapshot(run_copy) == before and not (tmp_path / "c").exists()
    finally:
        shutil.copy2(SHIPPED / "compose.json", run_copy / "compose.json")


# --- shipping again, and a shipped classifier of another role ----------------------------------------------------

def test_shipping_again_keeps_what_shipping_did_not_make(run_copy, tmp_path):
    before = snapshot(run_copy)
    refused(run("-m", "latent_ops.ship", "--run", str(run_copy), "--out", str(run_copy)), "the run being shipped")
    model = tmp_path / "model"
    shutil.copytree(run_copy, model)
    shipped = snapshot(model)
    refused(run("-m", "latent_ops.ship", "--run", str(run_copy), "--out", str(model), "--data", "no-data"),
            "learned", "--replace_learned true")
    (model / "notes.md").write_text("my notes\n")
    refused(run("-m", "latent_ops.ship", "--run", str(run_copy), "--out", str(model), "--data", "no-data",
                "--replace_learned", "true"), "notes.md", "move it out")
    assert snapshot(model) == {**shipped, str(model / "notes.md"): snapshot(model / "notes.md")[str(model / "notes.md")]}
    assert snapshot(run_copy) == before


def test_training_an_evaluator_never_replaces_the_perceptual_net(tmp_path):
    perceptual = tmp_path / "perceptual"
    shutil.copytree(ROOT / "autoencoder" / "weights" / "perceptual", perceptual)
    before = snapshot(perceptual)
    refused(run("-m", "autoencoder.train_evaluator", "--data", "no-data", "--out", str(tmp_path / "run"), "--ship",
                str(perceptual)), str(perceptual), "--role perceptual")
    assert snapshot(perceptual) == before


# --- what python-fire would misread, and expressions that nest too deeply ------------------------------------------

@pytest.mark.parametrize("args, words", [(["--", "-horse"], "--expression=-horse"),
                                         (["-horse"], "--expression=-horse"),
                                         (["--expression=" + "-" * 494 + "horse"], "494 signs in a row"),
                                         (["--expression=" + "(" * 60 + "horse" + ")" * 60], "60 parentheses deep"),
                                         (["pegasus", "--rise_gate", "1.5"], "--rise_gate must be between"),
                                         (["pegasus", "--mark_gate", "-0.5"], "--mark_gate must be between"),
                                         (["horse", "--mark_gate", "0.5"], "no judge of by-eye marks for 'horse'"),
                                         (["pegasus", "--negative", "unicorn"], "--negative 'unicorn' is not a CIFAR-10"),
                                         (["horse+wings", "--negative", "deer"], "steers draws from the prior")])
def test_compose_says_what_to_do_with_what_it_cannot_read(args, words, tmp_path):
    refused(run("-m", "latent_ops.compose", *args, "--run", str(SHIPPED), "--data", "no-data", "--out",
                str(tmp_path / "c")), words)
    assert not (tmp_path / "c").exists()


# --- learning a concept: reserved names, a replay that leaves nothing to learn, a malformed rule ------------------

@pytest.mark.parametrize("args, words", [(["wings"], "already a concept"), (["horse"], "CIFAR-10 class"),
                                         (["pegasus9", "--replay", "0.99"], "--replay 0.99 leaves 3"),
                                         (["pegasus9", "--accept", "horse>=1.2.3"], "one number between 0 and 1"),
                                         (["pegasus9", "--warm_start", "unicorn"], "not a concept")])
def test_learn_refuses_what_would_learn_nothing_or_hide_a_concept(args, words, run_copy, tmp_path):
    before = snapshot(run_copy)
    refused(run("-m", "latent_ops.learn", *args, "--run", str(run_copy), "--out", str(tmp_path / "l")), words)
    assert snapshot(run_copy) == before and not (tmp_path / "l").exists()


def test_a_learned_folder_that_hides_a_built_in_concept_is_refused(run_copy, tmp_path):
    planted = run_copy / "learned" / "horse"
    shutil.copytree(run_copy / "learned" / "pegasus", planted)
    try:
        refused(run("-m", "latent_ops.compose", "horse+wings", "--run", str(run_copy), "--data", "no-data", "--out",
                    str(tmp_path / "c")), "learned/horse", "hide")
    finally:
        shutil.rmtree(planted)


# --- damaged files: every file compose and edit read from a model folder, binary and truncated ---------------------

def damage(file: Path, how: str) -> None:
    data = file.read_bytes()
    file.write_bytes(bytes(range(256)) * 2 if how == "binary" else data[:len(data) // 2])


COMPOSE_READS = {  # a file of the model folder -> the compose that reads it (the base prior only under --source prior)
    **{name: ["pegasus"] for name in ("config.json", "model.safetensors", "latents.npz", "concepts.npz",
                                       "directions.json", "compose.json", "learned/pegasus/model.safetensors",
                                       "learned/pegasus/net.json", "learned/pegasus/source.json",
                                       "learned/pegasus/config.json")},
    **{name: ["horse+wings", "--source", "prior"] for name in ("prior/config.json", "prior/model.safetensors",
                                                               "prior/source.json")},
}
EDIT_READS = ("config.json", "model.safetensors", "latents.npz", "concepts.npz", "directions.json")


@pytest.fixture()
def model_copy(tmp_path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(SHIPPED, copy)
    return copy


@pytest.mark.parametrize("how", ["binary", "truncated"])
@pytest.mark.parametrize("name", sorted(COMPOSE_READS))
def test_compose_names_a_damaged_file_of_the_model_and_changes_nothing(name, how, model_copy, tmp_path):
    damage(model_copy / name, how)
    before = snapshot(model_copy)
    refused(run("-m", "latent_ops.compose", *COMPOSE_READS[name], "--run", str(model_copy), "--data", "no-data",
                "--out", str(tmp_path / "out")), name)
    assert snapshot(model_copy) == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize("how", ["binary", "truncated"])
@pytest.mark.parametrize("name", EDIT_READS)
def test_edit_names_a_damaged_file_of_the_model_and_changes_nothing(name, how, model_copy, tmp_path):
    damage(model_copy / name, how)
    before = snapshot(model_copy)
    refused(run("-m", "latent_ops.edit", "--run", str(model_copy), "--start", "test:1", "--moves", "wings=1",
                "--out", str(tmp_path / "out")), name)
    assert snapshot(model_copy) == before and not (tmp_path / "out").exists()


# --- training: resume through a link, with another preset, a damaged metrics file; a batch larger than the data ---

@pytest.fixture()
def run_to_resume(smoke_run, tmp_path) -> Path:
    run_ = tmp_path / "run"
    shutil.copytree(smoke_run, run_)
    return run_


def train_args(run_: Path, folder_data: Path, *extra: str) -> list[str]:
    return ["-m", "autoencoder.train", "--out", str(run_), "--data", str(folder_data), "--cache_dir",
            str(run_.parent / "cache"), *extra]


def test_resume_refuses_a_step_folder_that_is_a_link(run_to_resume, folder_data, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(run_to_resume, other)
    pointer = json.loads((run_to_resume / "checkpoint.json").read_text())["folder"]
    step = run_to_resume / "checkpoints" / pointer
    shutil.rmtree(step)
    step.symlink_to(other / "checkpoints" / pointer)
    before = snapshot(run_to_resume, other)
    refused(run(*train_args(run_to_resume, folder_data, "--resume", "--steps", "61")), "is a link", "own")
    assert snapshot(run_to_resume, other) == before


@pytest.mark.parametrize("how", ["binary", "truncated"])
@pytest.mark.parametrize("name", ["config.json", "checkpoint.json"])
def test_resume_names_a_damaged_run_file_and_changes_nothing(name, how, run_to_resume, folder_data):
    damage(run_to_resume / name, how)
    before = snapshot(run_to_resume)
    refused(run(*train_args(run_to_resume, folder_data, "--resume", "--steps", "61")), name)
    assert snapshot(run_to_resume) == before


def test_resume_refuses_another_preset(run_to_resume, folder_data):
    before = snapshot(run_to_resume)
    saved = json.loads((run_to_resume / "config.json").read_text())["preset"]
    other = "gpu" if saved != "gpu" else "cpu"
    refused(run(*train_args(run_to_resume, folder_data, "--resume", "--preset", other)), "--preset", repr(saved))
    assert snapshot(run_to_resume) == before


def test_resume_refuses_a_metrics_file_that_is_a_folder(run_to_resume, folder_data):
    (run_to_resume / "metrics.jsonl").unlink()
    (run_to_resume / "metrics.jsonl").mkdir()
    before = snapshot(run_to_resume)
    refused(run(*train_args(run_to_resume, folder_data, "--resume", "--steps", "61")), "metrics.jsonl",
            "not a plain file")
    assert snapshot(run_to_resume) == before


def test_resume_says_it_dropped_a_binary_metrics_file_and_goes_on(run_to_resume, folder_data):
    (run_to_resume / "metrics.jsonl").write_bytes(bytes(range(256)) * 4 + b"\n\xff\xfe\n{not json\n")
    done = run(*train_args(run_to_resume, folder_data, "--resume", "--steps", "61"))
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-800:]
    assert "were not metrics (damaged) and were dropped" in done.stdout
    assert "--steps 61 (it was 60)" in done.stdout, "a changed resumable flag is said aloud"


def test_a_batch_larger_than_the_data_is_refused(folder_data, tmp_path):
    refused(run("-m", "autoencoder.train", "--preset", "smoke", "--data", str(folder_data), "--cache_dir",
                str(tmp_path / "cache"), "--out", str(tmp_path / "r"), "--batch_size", "64"),
            "--batch_size 64 is more than the 48 training images")
    assert not (tmp_path / "r").exists()


# --- damaged files: every other command, each file it reads before its first expensive step ----------------------

MODEL_FILES = ("config.json", "model.safetensors", "latents.npz", "concepts.npz", "directions.json")
PRIOR_FILES = ("prior/config.json", "prior/model.safetensors", "prior/source.json")
LEARNED_FILES = ("compose.json", "learned/pegasus/model.safetensors", "learned/pegasus/net.json",
                 "learned/pegasus/config.json")
SHIPPED_READERS = {  # a command run on a copy of the shipped model -> its flags, the files it reads
    "atlas": (["-m", "latent_ops.atlas", "--data", "no-data", "--out", "OUT"], MODEL_FILES),
    "learn": (["-m", "latent_ops.learn", "pegasus2", "--out", "OUT"], MODEL_FILES + PRIOR_FILES),
    "report": (["-m", "latent_ops.report", "--data", "DATA", "--cache_dir", "CACHE", "--out", "OUT"],
               MODEL_FILES + PRIOR_FILES + LEARNED_FILES),
    "explore": (["-m", "latent_ops.explore", "--data", "no-data", "--port", "0", "--cache_dir", "CACHE", "--out",
                 "OUT"], MODEL_FILES),
    "prior": (["-m", "latent_ops.prior", "--data", "no-data", "--mirror", "false", "--out", "OUT"],
              ("config.json", "model.safetensors", "latents.npz")),
    "ship": (["-m", "latent_ops.ship", "--data", "no-data", "--out", "OUT"], ("config.json", "model.safetensors")),
}
WEIGHTS = "WEIGHTS"  # a trained run's current weights (the checkpoint its pointer names)
RUN_READERS = {  # a command run on a copy of a trained (smoke) run -> its flags, the files it reads
    "encode": (["-m", "latent_ops.encode", "--data", "DATA", "--cache_dir", "CACHE"], ("config.json", "checkpoint.json",
                                                                                      WEIGHTS)),
    "run_concepts": (["-m", "latent_ops.run_concepts", "--data", "DATA", "--cache_dir", "CACHE"],
                     ("config.json", "checkpoint.json", WEIGHTS)),
    "samples": (["-m", "autoencoder.samples", "--data", "DATA", "--cache_dir", "CACHE", "--out", "OUT.png"],
                ("config.json", "checkpoint.json", WEIGHTS)),
    "evaluate": (["-m", "autoencoder.evaluate", "--data", "DATA", "--cache_dir", "CACHE"],
                 ("config.json", "checkpoint.json", WEIGHTS)),
    "diagram": (["-m", "autoencoder.diagram", "--out", "OUT"], ("config.json",)),
}


def filled(args: list[str], tmp_path: Path, folder_data: Path) -> list[str]:
    values = {"OUT": str(tmp_path / "out"), "OUT.png": str(tmp_path / "out.png"), "DATA": str(folder_data),
              "CACHE": str(tmp_path / "cache")}
    return [values.get(a, a) for a in args]


def current_weights(run_: Path) -> Path:
    return run_ / "checkpoints" / json.loads((run_ / "checkpoint.json").read_text())["folder"] / "model.safetensors"


@pytest.mark.parametrize("how", ["binary", "truncated"])
@pytest.mark.parametrize("name, file", [(n, f) for n, (_, files) in sorted(SHIPPED_READERS.items()) for f in files])
def test_a_command_names_a_damaged_file_of_the_model_and_changes_nothing(name, file, how, model_copy, folder_data,
                                                                         tmp_path):
    damage(model_copy / file, how)
    before = snapshot(model_copy)
    refused(run(*filled(SHIPPED_READERS[name][0], tmp_path, folder_data), "--run", str(model_copy)), file)
    assert snapshot(model_copy) == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize("how", ["binary", "truncated"])
@pytest.mark.parametrize("name, file", [(n, f) for n, (_, files) in sorted(RUN_READERS.items()) for f in files])
def test_a_command_names_a_damaged_file_of_a_run_and_changes_nothing(name, file, how, run_to_resume, folder_data,
                                                                     tmp_path):
    target = current_weights(run_to_resume) if file == WEIGHTS else run_to_resume / file
    damage(target, how)
    before = snapshot(run_to_resume)
    done = run(*filled(RUN_READERS[name][0], tmp_path, folder_data), "--run", str(run_to_resume))
    refused(done, target.name)
    assert snapshot(run_to_resume) == before and not (tmp_path / "out").exists() \
        and not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("how", ["binary", "truncated"])
@pytest.mark.parametrize("name", ["config.json", "checkpoint.json"])
def test_an_evaluator_resume_names_a_damaged_file_and_changes_nothing(name, how, tiny_evaluator, folder_data,
                                                                      tmp_path):
    copy = tmp_path / "evaluator"
    shutil.copytree(tiny_evaluator[0], copy)
    damage(copy / name, how)
    before = snapshot(copy)
    refused(run("-m", "autoencoder.train_evaluator", "--out", str(copy), "--resume", "--data", str(folder_data),
                "--cache_dir", str(tmp_path / "cache")), name)
    assert snapshot(copy) == before


@pytest.mark.parametrize("args", [["-m", "latent_ops.encode"], ["-m", "latent_ops.run_concepts"]])
def test_a_shipped_model_is_never_encoded_or_fitted_again_in_place(args, model_copy, folder_data, tmp_path):
    before = snapshot(model_copy)
    refused(run(*args, "--run", str(model_copy), "--data", str(folder_data), "--cache_dir", str(tmp_path / "c")),
            "is a shipped model", "nothing was written")
    assert snapshot(model_copy) == before


def test_a_damaged_data_cache_is_said_and_rebuilt_the_same(run_to_resume, folder_data, tmp_path):
    cache = tmp_path / "cache"
    args = ["-m", "latent_ops.encode", "--run", str(run_to_resume), "--data", str(folder_data), "--cache_dir", str(cache)]
    assert run(*args).returncode == 0
    files = sorted(cache.glob("*.safetensors"))
    assert len(files) == 2, files  # train and test
    first = {f: f.read_bytes() for f in files}
    damage(files[0], "binary")
    damage(files[1], "truncated")
    done = run(*args)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-500:]
    assert done.stdout.count("is damaged") == 2, done.stdout
    assert {f: f.read_bytes() for f in files} == first


def test_the_diagram_never_replaces_a_drawing_it_did_not_make(smoke_run, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "architecture.png").write_bytes(b"my own drawing")
    before = snapshot(mine)
    refused(run("-m", "autoencoder.diagram", "--run", str(smoke_run), "--out", str(mine)), "architecture.png",
            "another --out")
    assert snapshot(mine) == before
    ours = tmp_path / "ours"  # its own drawing is drawn again
    for _ in range(2):
        done = run("-m", "autoencoder.diagram", "--run", str(smoke_run), "--out", str(ours))
        assert done.returncode == 0, done.stderr[-500:]
    assert (ours / "architecture.svg").stat().st_size > 1000
