"""Training: a smoke run learns, writes its run folder, is deterministic, resumes exactly; CLI errors."""
from __future__ import annotations

import json
import math

import fire
import pytest
import torch
from conftest import dies_on_call, smoke_flags
from PIL import Image
from safetensors.torch import load_file

from autoencoder import atomic, checkpoint
from autoencoder import train as train_module
from autoencoder.checkpoint import load_train_state, state_file
from autoencoder.config import PRESETS, load_train_config, make_config
from autoencoder.distributed import BatchSampler
from autoencoder.run_folder import load_run
from autoencoder.train import main, train


def read_metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_smoke_run_lowers_reconstruction_loss(smoke_run):
    metrics = read_metrics(smoke_run)
    assert [m["step"] for m in metrics] == [10, 20, 30, 40, 50, 60]
    assert metrics[-1]["eval/mse"] < 0.8 * metrics[0]["eval/mse"]
    assert metrics[-1]["eval/psnr"] > metrics[0]["eval/psnr"]


def test_run_folder_contents(smoke_run):
    for name in ("config.json", "model.safetensors", "checkpoint.json", "metrics.jsonl",
                 "checkpoints/step_00000060/model.safetensors", "checkpoints/step_00000060/train_state.pt"):
        assert (smoke_run / name).stat().st_size > 0, name
    assert [p.name for p in (smoke_run / "checkpoints").iterdir()] == ["step_00000060"], "old checkpoints kept"
    grids = sorted(p.name for p in (smoke_run / "samples").glob("*.png"))
    assert grids == ["step_000030.png", "step_000060.png"]
    with Image.open(smoke_run / "samples" / "step_000060.png") as grid:
        assert grid.size[0] > 300 and grid.size[1] > 300
    record = read_metrics(smoke_run)[-1]
    for key in ("loss/recon", "loss/latent", "loss/interp", "loss/image", "critic/latent",
                "critic/interp", "critic/image", "eval/mse", "eval/psnr", "images_per_s"):
        assert key in record, key
    assert not any(f.name.startswith(".") for f in smoke_run.iterdir()), "a temporary file was left"


def test_run_loads_without_executing_code(smoke_run):
    opened = load_run(smoke_run)
    config, nets = opened.config, opened.nets
    assert config.steps == 60
    assert load_train_state(state_file(smoke_run))["step"] == 60  # weights_only=True
    keys = load_file(str(smoke_run / "model.safetensors")).keys()
    for prefix in ("encoder.", "decoder.", "latent_critic.", "interp_critic.", "image_critic."):
        assert any(k.startswith(prefix) for k in keys), prefix
    assert nets.decoder(torch.zeros(1, config.latent_dim)).shape == (1, 3, 32, 32)


def weights(run):
    return load_file(str(run / "model.safetensors"))


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def kill_and_resume(folder_data, tmp_path, monkeypatch, **recipe):
    """An unbroken 20-step run, and the same run killed during step 16 then resumed by the CLI."""
    flags = dict(steps=20, log_every=5, checkpoint_every=10, sample_every=100, **recipe)
    whole = train(make_config("smoke", **flags, **smoke_flags(folder_data, tmp_path / "whole")), progress=False)

    # Killed during step 16: its last checkpoint is step 10, its last log step 15.
    real_step = train_module.train_step
    monkeypatch.setattr(train_module, "train_step", dies_on_call(real_step, 16))
    killed_config = make_config("smoke", **flags, **smoke_flags(folder_data, tmp_path / "killed"))
    with pytest.raises(KeyboardInterrupt):
        train(killed_config, progress=False)
    monkeypatch.setattr(train_module, "train_step", real_step)
    killed = tmp_path / "killed"
    assert load_train_state(state_file(killed))["step"] == 10
    assert [m["step"] for m in read_metrics(killed)] == [5, 10, 15]

    fire.Fire(main, command=["--out", str(killed), "--resume", "--data", str(folder_data),
                             "--cache_dir", str(tmp_path / "cache")])
    return whole, killed


def assert_resumed_exactly(whole, killed):
    assert same_weights(weights(whole), weights(killed))
    assert [m["step"] for m in read_metrics(killed)] == [5, 10, 15, 20]  # step 15 logged once
    clock = ("images_per_s", "elapsed_s")  # wall time is the one thing a resume may change
    for a, b in zip(read_metrics(killed), read_metrics(whole)):
        assert {k: v for k, v in a.items() if k not in clock} == {k: v for k, v in b.items() if k not in clock}
    assert load_train_state(state_file(killed))["step"] == 20


def test_same_seed_same_weights_and_resume_is_exact(folder_data, tmp_path, monkeypatch):
    whole, killed = kill_and_resume(folder_data, tmp_path, monkeypatch)
    flags = dict(steps=20, log_every=5, checkpoint_every=10, sample_every=100)
    again = train(make_config("smoke", **flags, **smoke_flags(folder_data, tmp_path / "again")), progress=False)
    assert same_weights(weights(whole), weights(again))
    other = train(make_config("smoke", **flags, seed=1, **smoke_flags(folder_data, tmp_path / "other")),
                  progress=False)
    assert not same_weights(weights(whole), weights(other))
    assert_resumed_exactly(whole, killed)


# The parts of the release recipe that are not sizes or schedule: they are what resume must carry.
RELEASE_PARTS = ("perceptual_weight", "gan_loss", "adaptive_image_weight", "image_weight", "image_critic_width",
                 "class_weight", "spatial_channels", "code_grid", "ema", "res_blocks")


@pytest.mark.parametrize("preset", ["release", "release-grid8"])
def test_the_release_recipe_resumes_exactly(preset, folder_data, tmp_path, monkeypatch):
    parts = {k: v for k, v in PRESETS[preset].items() if k in RELEASE_PARTS}
    assert parts, f"the {preset} preset changes none of the recipe's parts"
    if parts.get("spatial_channels"):  # the smallest code of the recipe's grid: 1 x G x G
        parts["spatial_channels"] = 1
        parts["latent_dim"] = parts.get("code_grid", 4) ** 2
    whole, killed = kill_and_resume(folder_data, tmp_path, monkeypatch, **parts)
    config = load_train_config(killed / "config.json")
    for name, value in parts.items():
        assert getattr(config, name) == value, name
    assert_resumed_exactly(whole, killed)


FAULT_FLAGS = dict(steps=20, log_every=5, checkpoint_every=10, sample_every=100)


@pytest.fixture(scope="module")
def unbroken_run(folder_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("unbroken") / "run"
    return train(make_config("smoke", **FAULT_FLAGS, **smoke_flags(folder_data, out)), progress=False)


@pytest.mark.parametrize("fault", ["second file of the step", "rename of the step folder", "pointer",
                                   "top-level copy"])
def test_a_kill_inside_a_checkpoint_write_loses_nothing(fault, unbroken_run, folder_data, tmp_path, monkeypatch,
                                                        capsys):
    """The writer dies at each point of the step-20 checkpoint; --resume then ends where an unbroken run does."""
    calls = []
    real_replace, real_folder, real_json = atomic.replace_atomically, atomic.replace_folder, checkpoint.write_json

    def count(kind):
        calls.append(kind)
        return calls.count(kind)

    def dying_replace(write, file):
        if fault == "second file of the step" and str(file).endswith("train_state.pt") and "step_00000020" in str(
                file.parent.name) and count("state") == 1:
            write(atomic.temporary_name(file))  # half written: the temporary is there, the rename never happens
            raise KeyboardInterrupt
        if fault == "top-level copy" and file.name == "model.safetensors" and file.parent == out and \
                json.loads((out / "checkpoint.json").read_text())["step"] == 20:
            raise KeyboardInterrupt
        return real_replace(write, file)

    def dying_folder(build, target):
        if fault == "rename of the step folder" and target.name == "step_00000020":
            build_dir = target.with_name(f".{target.name}.tmp1")
            build_dir.mkdir()
            build(build_dir)  # the step's files are complete, the folder never renamed
            raise KeyboardInterrupt
        return real_folder(build, target)

    def dying_json(value, file, indent=1):
        if fault == "pointer" and value.get("step") == 20:
            raise KeyboardInterrupt
        return real_json(value, file, indent)

    out = tmp_path / "run"
    monkeypatch.setattr(atomic, "replace_atomically", dying_replace)
    monkeypatch.setattr(checkpoint, "replace_atomically", dying_replace)
    monkeypatch.setattr(atomic, "replace_folder", dying_folder)
    monkeypatch.setattr(checkpoint, "replace_folder", dying_folder)
    monkeypatch.setattr(checkpoint, "write_json", dying_json)
    with pytest.raises(KeyboardInterrupt):
        train(make_config("smoke", **FAULT_FLAGS, **smoke_flags(folder_data, out)), progress=False)
    monkeypatch.undo()
    assert load_train_state(state_file(out))["step"] in (10, 20)
    code = None
    try:
        fire.Fire(main, command=["--out", str(out), "--resume", "--data", str(folder_data),
                                 "--cache_dir", str(tmp_path / "cache")])
    except SystemExit as stop:
        code = stop.code
    assert code is None, capsys.readouterr().err
    assert same_weights(weights(unbroken_run), weights(out))
    assert load_train_state(state_file(out))["step"] == 20
    assert [m["step"] for m in read_metrics(out)] == [5, 10, 15, 20]
    left = [p for p in (*out.iterdir(), *(out / "checkpoints").iterdir()) if p.name.startswith(".")]
    assert left == [], f"temporary files left: {left}"
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000020"]


def test_a_failed_write_removes_its_temporary_file(tmp_path):
    def half_then_fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic.replace_atomically(half_then_fail, tmp_path / "a.json")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    with pytest.raises(OSError):
        atomic.replace_folder(lambda d: half_then_fail(d / "new.txt"), tmp_path / "out")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (tmp_path / "out" / "old.txt").read_text() == "old"


def test_a_diverging_run_stops_and_keeps_its_last_good_checkpoint(folder_data, tmp_path, monkeypatch, capsys):
    from autoencoder import step as step_module

    real_loss, calls = step_module.losses.reconstruction_loss, []

    def poisoned(x, x_rec):
        calls.append(1)
        loss = real_loss(x, x_rec)
        return loss * float("nan") if len(calls) > 12 else loss

    monkeypatch.setattr(step_module.losses, "reconstruction_loss", poisoned)
    out = tmp_path / "nan"
    code, err = run_cli(capsys, "--preset", "smoke", *cli_flags(smoke_flags(folder_data, out, **FAULT_FLAGS)))
    assert code == 2 and "training diverged" in err and "last good checkpoint" in err
    assert load_train_state(state_file(out))["step"] == 10
    assert all(t.isfinite().all() for t in weights(out).values())
    assert [m["step"] for m in read_metrics(out)] == [5, 10]


def cli_flags(flags):
    return [part for k, v in flags.items() for part in (f"--{k}", str(v))]


def test_resuming_with_more_steps_never_raises_the_learning_rate(folder_data, tmp_path):
    from autoencoder.step import lr_factor

    config = make_config("smoke", **smoke_flags(folder_data, tmp_path / "r"), steps=10, log_every=5,
                         checkpoint_every=5)
    config.schedule_steps = 10
    train(config, progress=False)
    resumed = train_module.config_for("smoke", True, dict(out=str(tmp_path / "r"), steps=30))
    assert resumed.steps == 30 and resumed.schedule_steps == 10
    rates = [lr_factor(s, resumed) for s in range(30)]
    assert all(b <= a for a, b in zip(rates, rates[1:])), "the learning rate rose"
    assert rates[9] == rates[29] == pytest.approx(resumed.lr_min_ratio)
    shorter = train_module.config_for("smoke", True, dict(out=str(tmp_path / "r"), steps=5))
    assert [lr_factor(s, shorter) for s in range(5)] == rates[:5]
    paths = {k: v for k, v in smoke_flags(folder_data, tmp_path / "r").items() if k != "out"}
    train(train_module.config_for("smoke", True, dict(out=str(tmp_path / "r"), steps=12, **paths)), resume=True,
          progress=False)
    saved = load_train_config(tmp_path / "r" / "config.json")
    assert (saved.steps, saved.schedule_steps) == (12, 10), "config.json does not say what the run was trained for"
    assert read_metrics(tmp_path / "r")[-1]["step"] == 12


@pytest.mark.parametrize("off", ["latent_weight", "interp_weight", "image_weight"])
def test_each_part_can_be_switched_off(folder_data, tmp_path, off):
    run = train(make_config("smoke", steps=4, log_every=4, **{off: 0},
                            **smoke_flags(folder_data, tmp_path / off)), progress=False)
    record = read_metrics(run)[-1]
    part = off.removesuffix("_weight")
    assert f"loss/{part}" not in record and f"critic/{part}" not in record
    assert "loss/recon" in record


def test_plain_autoencoder_without_critics(folder_data, tmp_path):
    run = train(make_config("smoke", steps=4, log_every=4, latent_weight=0, interp_weight=0, image_weight=0,
                            **smoke_flags(folder_data, tmp_path / "plain")), progress=False)
    assert [k for k in read_metrics(run)[-1] if k.startswith("critic/")] == []


def test_class_selection_trains_on_those_classes(folder_data, tmp_path):
    run = train(make_config("smoke", steps=2, log_every=2, classes="horse",
                            **smoke_flags(folder_data, tmp_path / "horse")), progress=False)
    assert json.loads((run / "config.json").read_text())["classes"] == "horse"


def test_batch_sampler_visits_every_image_once_per_epoch():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1)
    sampler = BatchSampler(images, batch_size=5, seed=0)
    seen = torch.cat([sampler.batch(s) for s in range(2)]).flatten().tolist()
    assert sorted(seen) == list(range(10))
    assert sampler.batch(0).tolist() == BatchSampler(images, 5, 0).batch(0).tolist()


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        fire.Fire(main, command=list(args))
    return exit_info.value.code, capsys.readouterr().err


def test_cli_errors_are_one_clear_line(folder_data, tmp_path, capsys, smoke_run):
    cases = [
        (("--preset", "smoke", "--laten_dim", "3"), "unknown flag(s) --laten_dim"),
        (("--preset", "smoke", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "r")), "--download"),
        (("--resume", "--out", str(tmp_path / "never")), "no checkpoint to resume"),
        (("--resume",), "--resume needs --out"),
        (("--preset", "smoke", "--out", str(smoke_run)), "already holds a run"),
        (("--resume", "--out", str(smoke_run), "--latent_dim", "99"), "cannot change --latent_dim"),
        (("--resume", "--out", str(smoke_run), "--preset", "cpu"), "cannot change --preset"),
    ]
    for args, message in cases:
        code, err = run_cli(capsys, *args)
        assert code == 2 and message in err, (args, err)
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, (args, err)
    assert not (tmp_path / "r").exists(), "missing data left a half-made run folder"


@pytest.mark.parametrize("flag, value, message", [
    ("lr", "inf", "--lr must be a finite number"), ("lr", "nan", "--lr must be a finite number"),
    ("latent_weight", "nan", "--latent_weight must be a finite number"),
    ("image_weight", "1e999", "--image_weight must be a finite number"),
    ("image_weight", "-1", "--image_weight must be between 0"), ("steps", "2.5", "--steps takes a whole number"),
    ("latent_dim", "1e9", "--latent_dim must be between"), ("seed", "-1", "--seed must be between"),
    ("batch_size", "0", "--batch_size must be between"), ("interp_gamma", "2", "--interp_gamma must be between"),
])
def test_bad_numbers_are_refused_where_they_enter(flag, value, message, capsys, tmp_path):
    code, err = run_cli(capsys, "--preset", "smoke", "--out", str(tmp_path / "r"), f"--{flag}", value)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_a_folder_that_is_not_a_run_is_never_overwritten(folder_data, tmp_path, capsys):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("precious")
    code, err = run_cli(capsys, "--preset", "smoke", *cli_flags(smoke_flags(folder_data, mine)))
    assert code == 2 and "not empty and not a run folder" in err and "chapter1.tex" in err
    assert [p.name for p in mine.iterdir()] == ["chapter1.tex"]


def test_a_tampered_config_is_checked_like_flags(smoke_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(smoke_run, run)
    config = json.loads((run / "config.json").read_text())
    for field, value, message in [("lr", "Infinity", "--lr must be a finite number"),
                                  ("latent_dim", -3, "--latent_dim must be between"),
                                  ("width", "wide", "--width takes a int"), ("preset", "evil", "unknown preset")]:
        (run / "config.json").write_text(json.dumps({**config, field: value}).replace('"Infinity"', "Infinity"))
        code, err = run_cli(capsys, "--resume", "--out", str(run))
        assert code == 2 and message in err and "config.json" in err, err
    (run / "config.json").write_text("{not json")
    code, err = run_cli(capsys, "--resume", "--out", str(run))
    assert code == 2 and "config.json is damaged" in err


def test_paths_in_a_loaded_config_are_not_used(smoke_run, tmp_path, folder_data, capsys):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(smoke_run, run)
    elsewhere = tmp_path / "elsewhere"
    config = json.loads((run / "config.json").read_text())
    config.update(cache_dir=str(elsewhere / "cache"), data=str(elsewhere / "data"), out=str(elsewhere / "out"))
    (run / "config.json").write_text(json.dumps(config))
    resumed = train_module.config_for("smoke", True, dict(out=str(run), steps=62, data=str(folder_data)))
    assert resumed.out == str(run) and resumed.data == str(folder_data) and resumed.cache_dir == "data/cache"


@pytest.mark.parametrize("damage", ["model.safetensors", "train_state.pt", "checkpoint.json"])
def test_damaged_checkpoint_files_are_named(damage, smoke_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(smoke_run, run)
    file = run / damage if damage == "checkpoint.json" else run / "checkpoints" / "step_00000060" / damage
    file.write_bytes(file.read_bytes()[: len(file.read_bytes()) // 2])
    code, err = run_cli(capsys, "--resume", "--out", str(run), "--steps", "70")
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and damage in errors[0] and "Traceback" not in err, err


def test_a_pointer_cannot_lead_outside_the_run(smoke_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(smoke_run, run)
    (run / "checkpoint.json").write_text(json.dumps({"step": 60, "folder": "../../elsewhere"}))
    code, err = run_cli(capsys, "--resume", "--out", str(run), "--steps", "70")
    assert code == 2 and "does not name a checkpoint folder" in err


def test_weights_holding_nan_are_refused_with_the_file_named(smoke_run, tmp_path):
    import shutil

    from autoencoder.atomic import save_tensors
    from autoencoder.run_folder import RunError, model_file

    run = tmp_path / "copy"
    shutil.copytree(smoke_run, run)
    tensors = weights(run)
    first = sorted(k for k in tensors if tensors[k].is_floating_point())[0]
    tensors[first] = tensors[first] * float("nan")
    save_tensors(tensors, model_file(run))
    with pytest.raises(RunError, match=f"{first} holds NaN or infinity"):
        load_run(run)


def test_a_perceptual_term_trains_with_its_own_net_and_never_the_evaluator(folder_data, tmp_path, tiny_evaluator,
                                                                           capsys):
    from conftest import tiny_evaluator_config

    from autoencoder.train_evaluator import train_evaluator

    net = tmp_path / "perceptual"
    train_evaluator(tiny_evaluator_config(folder_data, net, role="perceptual", seed=1), progress=False)
    flags = dict(steps=6, log_every=3, perceptual_weight=1.0, **smoke_flags(folder_data, tmp_path / "run"))
    run = train(make_config("smoke", perceptual_net=str(net), **flags), progress=False)
    records = read_metrics(run)
    assert all(math.isfinite(r["loss/perceptual"]) for r in records)
    assert records[-1]["loss/perceptual"] < records[0]["loss/perceptual"]
    code, err = run_cli(capsys, "--preset", "smoke", "--perceptual_net", str(tiny_evaluator[0]),
                        *cli_flags({**flags, "out": str(tmp_path / "judged")}))
    assert code == 2 and "holds the evaluator network" in err


def test_hinge_critic_with_adaptive_weight_trains_and_logs_its_balance(folder_data, tmp_path):
    run = train(make_config("smoke", steps=6, log_every=3, gan_loss="hinge", adaptive_image_weight=True,
                            image_critic_width=12, image_weight=0.5, **smoke_flags(folder_data, tmp_path / "h")),
                progress=False)
    records = read_metrics(run)
    assert all(r["loss/image_balance"] > 0 and math.isfinite(r["loss/image_balance"]) for r in records)
    assert records[-1]["eval/mse"] < records[0]["eval/mse"] * 1.5
    opened = load_run(run)
    _, nets = opened.config, opened.nets
    assert nets.image_critic.net[0].out_channels == 12 and nets.interp_critic.net[0].out_channels == 8


def test_a_class_head_learns_the_labels_of_the_images_it_sees(folder_data, tmp_path):
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 2, 2).contiguous()
    sampler = BatchSampler(images, batch_size=4, seed=0, labels=torch.arange(10) * 7)
    for step in range(5):  # the labels follow the images through every epoch's order
        assert torch.equal(sampler.batch(step)[:, 0, 0, 0].long() * 7, sampler.batch_labels(step))

    run = train(make_config("smoke", steps=20, log_every=10, class_weight=1.0,
                            **smoke_flags(folder_data, tmp_path / "classes")), progress=False)
    records = read_metrics(run)
    assert records[-1]["loss/class"] < records[0]["loss/class"]
    opened = load_run(run)
    _, nets = opened.config, opened.nets
    assert nets.class_head is not None and nets.class_head.out_features == 10
    assert "class_head" in nets.names and nets.class_head.weight in set(nets.autoencoder_parameters())
    opened = load_run(unbroken_path(folder_data, tmp_path))
    _, plain = opened.config, opened.nets
    assert plain.class_head is None and "class_head" not in plain.names


def unbroken_path(folder_data, tmp_path):
    return train(make_config("smoke", steps=2, log_every=2, **smoke_flags(folder_data, tmp_path / "plain")),
                 progress=False)


def test_the_weight_average_is_what_a_run_saves_and_it_resumes_exactly(folder_data, tmp_path, monkeypatch):
    whole, killed = kill_and_resume(folder_data, tmp_path, monkeypatch, ema=0.9)
    assert_resumed_exactly(whole, killed)
    saved = weights(whole)
    raw = load_train_state(state_file(whole))["raw_autoencoder"]
    assert set(raw) and all(name.startswith(("encoder.", "decoder.")) for name in raw)
    moved = [name for name in raw if not torch.allclose(saved[name].float(), raw[name].float())]
    assert moved, "the saved autoencoder is the average, not the trained weights"
    plain = train(make_config("smoke", steps=20, log_every=5, checkpoint_every=10, sample_every=100,
                              **smoke_flags(folder_data, tmp_path / "plain")), progress=False)
    critics = [n for n in saved if n.startswith("image_critic.")]
    assert all(torch.equal(saved[n], weights(plain)[n]) for n in critics)  # the critics train alike, unaveraged
    assert "raw_autoencoder" not in load_train_state(state_file(plain))


def test_the_weight_average_moves_its_share_of_the_way():
    from autoencoder.averaging import WeightAverage
    from autoencoder.models import ModelConfig, Networks

    torch.manual_seed(0)
    nets = Networks(ModelConfig(latent_dim=8, width=4, critic_width=4, latent_critic_hidden=8))
    average = WeightAverage(nets, decay=0.75)
    start = {n: t.clone() for n, t in average.average.items()}
    name = next(n for n in average.names if n.startswith("encoder."))
    with torch.no_grad():
        for p in nets.encoder.parameters():
            p.add_(1.0)
    average.update(nets, 1)  # the first step takes the trained weights whole: nothing of the initial ones
    assert torch.allclose(average.average[name], start[name] + 1.0)
    with torch.no_grad():
        for p in nets.encoder.parameters():
            p.add_(1.0)
    average.update(nets, 2)  # (0.75 * 0.25 * w1 + 0.25 * w2) / (1 - 0.75^2)
    assert torch.allclose(average.average[name], start[name] + 1.0 + 0.25 / (1 - 0.75 ** 2))
    with average.swapped_in(nets):
        assert torch.allclose(nets.state_dict()[name], average.average[name])
    assert torch.allclose(nets.state_dict()[name], start[name] + 2.0)  # the trained weights are back
    for _ in range(3, 200):
        average.update(nets, _)
    assert abs(average.share(10_000) - 0.25) < 1e-12 and torch.allclose(average.average[name], start[name] + 2.0)
    with pytest.raises(ValueError, match="from 1"):
        average.update(nets, 0)
    assert not any(n.startswith(("image_critic.", "latent_critic.")) for n in average.names)


def test_a_decoder_fine_tune_keeps_every_code_and_trains_the_decoder(folder_data, tmp_path, smoke_run):
    flags = dict(steps=10, log_every=5, checkpoint_every=10, sample_every=100, latent_weight=0.0,
                 image_critic_width=16, image_critic_patches=True, image_weight=0.1)
    tuned = train(make_config("smoke", init_from=str(smoke_run), train_encoder=False, ema=0.9, **flags,
                              **smoke_flags(folder_data, tmp_path / "tuned")), progress=False)
    start, after = weights(smoke_run), weights(tuned)
    encoder = [n for n in start if n.startswith("encoder.")]
    assert encoder and all(torch.equal(start[n], after[n]) for n in encoder), "the frozen encoder moved"
    assert any(not torch.equal(start[n], after[n]) for n in start if n.startswith("decoder."))
    assert any(start[n].shape != after[n].shape for n in after if n.startswith("image_critic.")), \
        "the image critic should be the wider one of the config"
    codes = [load_run(run).nets.encoder(torch.zeros(2, 3, 32, 32)) for run in (smoke_run, tuned)]
    assert torch.equal(*codes)
    record = read_metrics(tuned)[-1]
    assert 0 < record["eval/sharpness"] < 10


def test_the_sharpen_recipe_logs_its_spectral_term_and_resumes_exactly(folder_data, tmp_path, monkeypatch, smoke_run):
    recipe = {k: v for k, v in PRESETS["release-grid8-sharpen"].items()
              if k in ("train_encoder", "latent_weight", "class_weight", "spectral_weight", "ema")}
    assert recipe["spectral_weight"] > 0 and recipe["train_encoder"] is False
    whole, killed = kill_and_resume(folder_data, tmp_path, monkeypatch, init_from=str(smoke_run), **recipe)
    assert_resumed_exactly(whole, killed)
    assert all(m["loss/spectral"] > 0 for m in read_metrics(killed))
    assert load_train_config(killed / "config.json").spectral_weight == recipe["spectral_weight"]


def test_init_from_starts_where_the_other_run_stopped(folder_data, tmp_path, smoke_run):
    started = train(make_config("smoke", init_from=str(smoke_run), steps=1, log_every=1, lr=1e-9, critic_lr=1e-9,
                                **smoke_flags(folder_data, tmp_path / "next")), progress=False)
    first = read_metrics(started)[0]["eval/psnr"]
    assert abs(first - read_metrics(smoke_run)[-1]["eval/psnr"]) < 0.05, "it did not start from the run's weights"


@pytest.mark.parametrize("flags, message", [
    (["--train_encoder", "false"], "needs --init_from"),
    (["--train_encoder", "false", "--init_from", "RUN"], "--latent_weight 0.005"),
    (["--init_from", "nowhere"], "--init_from nowhere is not a run folder"),
    (["--init_from", "RUN", "--width", "16"], "its autoencoder does not fit"),
])
def test_fine_tune_flags_are_refused_with_one_line(flags, message, folder_data, smoke_run, tmp_path, capsys):
    flags = [str(smoke_run) if f == "RUN" else f for f in flags]
    code, err = run_cli(capsys, "--preset", "smoke", "--data", str(folder_data), "--out", str(tmp_path / "r"), *flags)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r" / "model.safetensors").exists()


def test_a_free_image_critic_held_by_r1_trains_and_logs_its_penalty(folder_data, tmp_path, capsys):
    run = train(make_config("smoke", steps=6, log_every=3, image_critic_spectral=False, r1_weight=1.0,
                            image_critic_patches=True, **smoke_flags(folder_data, tmp_path / "r1")), progress=False)
    record = read_metrics(run)[-1]
    assert record["critic/image_r1"] > 0 and math.isfinite(record["critic/image"])
    critic = load_run(run).nets.image_critic
    assert not any(hasattr(m, "parametrizations") for m in critic.modules()), "the critic is still normalised"
    code, err = run_cli(capsys, "--preset", "smoke", "--out", str(tmp_path / "x"), "--r1_weight", "1",
                        "--image_weight", "0")
    assert code == 2 and "--r1_weight penalises the image critic" in err


def test_the_same_weights_and_metadata_save_to_the_same_bytes(tmp_path):
    """safetensors writes metadata in a Rust HashMap's order, which changes between saves; the digest of a
    file (the stamp of everything made from it) must not."""
    import hashlib

    from safetensors import safe_open

    tensors = {"b": torch.zeros(3), "a": torch.ones(2, dtype=torch.float16)}
    metadata = {"z": "1", "shipped_from": "/tmp/ü x", "a": "2", "step": "7"}
    digests = set()
    for attempt in range(12):  # 4 keys: 24 orders, so unsorted saves differ here with near certainty
        atomic.save_tensors(tensors, tmp_path / "w.safetensors", metadata)
        digests.add(hashlib.sha256((tmp_path / "w.safetensors").read_bytes()).hexdigest())
    assert len(digests) == 1
    with safe_open(str(tmp_path / "w.safetensors"), "pt") as f:
        assert f.metadata() == metadata and f.get_tensor("a").equal(tensors["a"])
