"""Training: a smoke run learns, writes its run folder, is deterministic, resumes exactly; CLI errors."""
from __future__ import annotations

import json

import fire
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from autoencoder.checkpoint import load_run, load_train_state
from autoencoder.config import make_config
from autoencoder import train as train_module
from autoencoder.data import BatchSampler
from autoencoder.train import main, train
from conftest import smoke_flags


def read_metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_smoke_run_lowers_reconstruction_loss(smoke_run):
    metrics = read_metrics(smoke_run)
    assert [m["step"] for m in metrics] == [10, 20, 30, 40, 50, 60]
    assert metrics[-1]["eval/mse"] < 0.8 * metrics[0]["eval/mse"]
    assert metrics[-1]["eval/psnr"] > metrics[0]["eval/psnr"]


def test_run_folder_contents(smoke_run):
    for name in ("config.json", "model.safetensors", "train_state.pt", "metrics.jsonl"):
        assert (smoke_run / name).stat().st_size > 0, name
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
    config, nets = load_run(smoke_run)
    assert config.steps == 60
    assert load_train_state(smoke_run / "train_state.pt")["step"] == 60  # weights_only=True
    keys = load_file(str(smoke_run / "model.safetensors")).keys()
    for prefix in ("encoder.", "decoder.", "latent_critic.", "interp_critic.", "image_critic."):
        assert any(k.startswith(prefix) for k in keys), prefix
    assert nets.decoder(torch.zeros(1, config.latent_dim)).shape == (1, 3, 32, 32)


def weights(run):
    return load_file(str(run / "model.safetensors"))


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_same_weights_and_resume_is_exact(folder_data, tmp_path, monkeypatch):
    flags = dict(steps=20, log_every=5, checkpoint_every=10, sample_every=100)
    whole = train(make_config("smoke", **flags, **smoke_flags(folder_data, tmp_path / "whole")), progress=False)
    again = train(make_config("smoke", **flags, **smoke_flags(folder_data, tmp_path / "again")), progress=False)
    assert same_weights(weights(whole), weights(again))
    other = train(make_config("smoke", **flags, seed=1, **smoke_flags(folder_data, tmp_path / "other")),
                  progress=False)
    assert not same_weights(weights(whole), weights(other))

    # The same run killed during step 16: its last checkpoint is step 10, its last log step 15.
    real_step, calls = train_module.train_step, []

    def dying_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 16:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", dying_step)
    killed_config = make_config("smoke", **flags, **smoke_flags(folder_data, tmp_path / "killed"))
    with pytest.raises(KeyboardInterrupt):
        train(killed_config, progress=False)
    monkeypatch.setattr(train_module, "train_step", real_step)
    killed = tmp_path / "killed"
    assert load_train_state(killed / "train_state.pt")["step"] == 10
    assert [m["step"] for m in read_metrics(killed)] == [5, 10, 15]

    fire.Fire(main, command=["--out", str(killed), "--resume"])
    assert same_weights(weights(whole), weights(killed))
    assert [m["step"] for m in read_metrics(killed)] == [5, 10, 15, 20]  # step 15 logged once
    for a, b in zip(read_metrics(killed), read_metrics(whole)):
        assert a["eval/mse"] == b["eval/mse"] and a["loss/recon"] == b["loss/recon"]
    assert load_train_state(killed / "train_state.pt")["step"] == 20


def test_resume_refuses_weights_and_state_of_different_steps(smoke_run, tmp_path, capsys):
    import shutil

    from autoencoder.checkpoint import save_weights

    run = tmp_path / "torn"
    shutil.copytree(smoke_run, run)
    _, nets = load_run(run)
    save_weights(nets, run / "model.safetensors", metadata={"step": "59"})  # state says 60
    code, err = run_cli(capsys, "--resume", "--out", str(run), "--steps", "70")
    assert code == 2 and "weights of step 59 but training state of step 60" in err


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
    code, err = run_cli(capsys, "--preset", "smoke", "--laten_dim", "3")
    assert code == 2 and "unknown flag(s) --laten_dim" in err
    code, err = run_cli(capsys, "--preset", "smoke", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "r"))
    assert code == 2 and "--download" in err
    code, err = run_cli(capsys, "--resume", "--out", str(tmp_path / "never"))
    assert code == 2 and "no checkpoint to resume" in err
    code, err = run_cli(capsys, "--resume")
    assert code == 2 and "--resume needs --out" in err
    code, err = run_cli(capsys, "--preset", "smoke", "--out", str(smoke_run))
    assert code == 2 and "--resume" in err and "already holds a run" in err
    code, err = run_cli(capsys, "--resume", "--out", str(smoke_run), "--latent_dim", "99")
    assert code == 2 and "cannot change --latent_dim" in err
    for err_line in [line for line in err.splitlines() if line.startswith("error:")]:
        assert "\n" not in err_line
