"""Benchmark helpers: the FLOP count of a training step and the GPU peak table."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from train_throughput import bf16_peak, flops_per_image  # noqa: E402


def test_gpu_peaks_are_found_by_name_pcie_before_sxm():
    assert bf16_peak("NVIDIA H100 PCIe") == pytest.approx(756e12)
    assert bf16_peak("NVIDIA H100 80GB HBM3") == pytest.approx(989.4e12)
    assert bf16_peak("NVIDIA GeForce GTX 1080") is None


def test_step_flops_grow_with_width_and_with_the_critics():
    plain = dict(latent_weight=0, interp_weight=0, image_weight=0, critic_width=8)
    narrow = flops_per_image("smoke", plain)
    wide = flops_per_image("smoke", {**plain, "width": 16})
    assert 3 < wide / narrow < 4.2  # convolutions: twice the channels in and out, but the first layer
    assert flops_per_image("smoke", {}) > 2 * narrow  # critics, mixes and prior decodes on top


def test_repeated_measurements_are_summarised_and_a_busy_machine_is_flagged(tmp_path):
    import json

    from record import busy_warning, summarise, write_record

    quiet = summarise([100.0, 104.0, 98.0])
    assert quiet["median"] == 100.0 and quiet["spread"] == pytest.approx(0.06)
    busy = summarise([100.0, 40.0, 148.0])
    assert busy_warning({"fp32": quiet}) is None
    assert "bf16 swung by 108%" in busy_warning({"fp32": quiet, "bf16": busy})
    file = write_record("toy", {"images_per_s": {"fp32": quiet}}, folder=tmp_path)
    record = json.loads(file.read_text())
    assert record["bench"] == "toy" and record["images_per_s"]["fp32"]["samples"] == [100.0, 104.0, 98.0]


def test_ablation_trains_a_recipe_for_its_minutes_measures_it_and_skips_it_after(folder_data, tmp_path, capsys,
                                                                                   monkeypatch):
    import json
    import math

    from autoencoder import train as train_module

    # the row's minutes run out after 3 steps, whatever the machine's speed (the clock is the only thing replaced)
    monkeypatch.setattr(train_module, "out_of_time", lambda began, step, config, *rest: step >= 3)

    from ablation import main as ablation_main
    from ablation import recipe_flags

    assert recipe_flags("hinge")["perceptual_weight"] == 1.0 and recipe_flags("baseline") == {}
    assert recipe_flags("critic-features") == {"perceptual_weight": 1.0, "perceptual_source": "critic"}
    assert recipe_flags("classes")["spatial_channels"] == 8 and "perceptual_source" not in recipe_flags("classes")
    finest = recipe_flags("grid8-ema")
    assert finest["code_grid"] == 8 and finest["latent_dim"] == 4 * 8 * 8 and finest["ema"] == 0.999
    assert finest["class_weight"] == 0.1 and finest["res_blocks"] == 1 and "gan_loss" not in finest
    folder = tmp_path / "ablation"
    ablation_main(data=str(folder_data), minutes=0.02, recipes="baseline", cache_dir=str(tmp_path / "cache"),
                  folder=str(folder), preset="smoke", prior=False)
    row = json.loads((folder / "baseline" / "ablation.json").read_text())
    assert row["steps"] == 3
    for key in ("psnr_db", "recon_frechet", "recon_sharpness", "images_per_s"):
        assert isinstance(row[key], float) and math.isfinite(row[key]) and row[key] > 0, (key, row[key])
    for key in ("probe_accuracy", "wing_accuracy", "recognisability_mean"):
        assert isinstance(row[key], float) and 0 <= row[key] <= 1, (key, row[key])
    assert "| baseline |" in (folder / "table.md").read_text()
    ablation_main(data=str(folder_data), minutes=0.02, recipes="baseline", cache_dir=str(tmp_path / "cache"),
                  folder=str(folder), preset="smoke", prior=False)
    assert "measured before" in capsys.readouterr().out


def test_ablation_measures_an_averaged_run_and_its_raw_weights_each_with_the_prior_columns(folder_data, tmp_path,
                                                                                          monkeypatch):
    import json

    from ablation import main as ablation_main
    from safetensors.torch import load_file

    from autoencoder import train as train_module

    # the row's time runs out after 3 steps, however busy the machine is (a loaded CPU gave fewer than 2 in 6 s)
    monkeypatch.setattr(train_module, "out_of_time", lambda began, step, config, *rest: step >= 3)

    folder = tmp_path / "ablation"
    ablation_main(data=str(folder_data), minutes=0.1, recipes="grid8-ema", raw="grid8-ema", preset="smoke",
                  cache_dir=str(tmp_path / "cache"), folder=str(folder), prior_steps=4, prior_channels=8, per_class=2,
                  pegasus="2*horse&3*bird@top")  # the tiny data has no airplanes
    averaged, raw = (json.loads((folder / name / "ablation.json").read_text()) for name in ("grid8-ema", "grid8-ema-raw"))
    assert raw["flags"]["ema"] == 0.0 and raw["steps"] == averaged["steps"] >= 2  # after one step they are equal
    for row in (averaged, raw):
        assert 0 <= row["prior_p_class_mean"] <= 1 and 0 <= row["pegasus_share"] <= 1
        assert set(row["prior_p_class"]) >= {"horse", "bird"} and Path(row["pegasus_grid"]).is_file()
    mean_weights = load_file(str(folder / "grid8-ema" / "model.safetensors"))
    raw_weights = load_file(str(folder / "grid8-ema-raw" / "model.safetensors"))
    first = next(n for n in mean_weights if n.startswith("decoder.") and n.endswith("weight"))
    assert not mean_weights[first].equal(raw_weights[first])  # the average is not the raw trajectory
    critic = next(n for n in mean_weights if n.startswith("image_critic."))
    assert mean_weights[critic].equal(raw_weights[critic])  # the critics are not averaged
    table = (folder / "table.md").read_text()
    assert "| grid8-ema-raw |" in table and "Pegasus share" in table


def test_ablation_refuses_raw_weights_of_a_recipe_it_does_not_run(folder_data, tmp_path):
    from ablation import main as ablation_main

    with pytest.raises(SystemExit, match="grid8-wide"):
        ablation_main(data=str(folder_data), recipes="grid8-ema", raw="grid8-wide", folder=str(tmp_path / "a"))


def test_release_targets_say_which_are_met_and_by_how_much_the_others_miss():
    from release_targets import verdicts

    row = {"recon_sharpness": 0.03, "real_sharpness": 0.036, "recon_frechet": 13.0, "probe_accuracy": 0.7,
           "wing_accuracy": 0.8, "psnr_db": 24.5}
    result = verdicts(row)
    assert result["sharpness / real"]["met"] and result["probe accuracy"]["met"] and result["PSNR dB"]["met"]
    assert not result["reconstruction Frechet"]["met"] and result["reconstruction Frechet"]["missed_by"] == 5.0
    assert not result["wing accuracy"]["met"] and abs(result["wing accuracy"]["missed_by"] - 0.05) < 1e-12
    assert result["guided prior P(class)"] == {"value": None, "target": 0.7, "met": False, "missed_by": None}
    guided = verdicts({**row, "psnr_db": 23.9, "prior_p_class_mean": 0.65})
    assert not guided["PSNR dB"]["met"] and abs(guided["guided prior P(class)"]["missed_by"] - 0.05) < 1e-12


def test_manifold_targets_read_a_pooled_report_and_give_each_verdict():
    from manifold_targets import targets_of

    def row(name, **values):
        return {"name": name, "count": 64, **values}

    record = {"sets": [row("real: test images", nn_feature_median=1.0),
                       row("model: prior samples N(0, I)", frechet=100.0),
                       row("model: latent prior samples (classes in turn)", frechet=40.0)],
              "compositions": [{"subject": "horse", "pool": {"share_every_intent_term_at_least_gate": 0.3},
                                "recognisability_best": {"horse": 0.5, "winged": 0.2, "combined": 0.6},
                                "sets": [row("composed horse+wings, the unselected pool of 1024"),
                                         row("composed horse+wings, the kept 64", sharpness=0.02,
                                             diversity_feature=0.9, nn_feature_median=1.2),
                                         row("real: 64 test horse images (the floor)", sharpness=0.02,
                                             diversity_feature=1.0)]}]}
    result = targets_of(record)
    assert not result["pool share with both terms >= 0.2"]["met"]
    assert abs(result["pool share with both terms >= 0.2"]["missed_by"] - 0.2) < 1e-12
    assert result["best P(horse)"]["met"] and not result["best P(bird)+P(airplane)"]["met"]
    assert result["kept sharpness / real horses"]["met"] and result["kept diversity / 64 real horses"]["met"]
    assert result["kept NN feature distance - real test median"]["met"]
    assert result["latent prior Frechet / N(0, I) Frechet"]["met"]  # 0.4 <= 0.5


def test_an_average_made_without_the_bias_correction_is_corrected_exactly(folder_data, tmp_path):
    import torch
    from ablation import corrected_average_run
    from safetensors.torch import load_file, save_file

    from autoencoder.config import make_config
    from autoencoder.models import build_networks
    from autoencoder.train import train

    run = train(make_config("smoke", steps=12, ema=0.9, checkpoint_every=12, log_every=12, sample_every=100,
                            data=str(folder_data), cache_dir=str(tmp_path / "cache"), out=str(tmp_path / "run")),
                progress=False)
    made_now = load_file(str(run / "model.safetensors"))  # the bias-corrected average of steps 1..12
    torch.manual_seed(0)
    initial = build_networks(make_config("smoke")).state_dict()
    left = 0.9 ** 12
    old = {n: (left * initial[n] + (1 - left) * t) if n.startswith(("encoder.", "decoder.")) else t
           for n, t in made_now.items()}  # what plain (1 - d) steps from the initial weights would have saved
    old_run = tmp_path / "old"
    shutil.copytree(run, old_run)
    for file in (old_run / "model.safetensors", *old_run.glob("checkpoints/*/model.safetensors")):
        save_file(old, str(file))
    fixed = load_file(str(corrected_average_run(old_run, tmp_path / "corrected") / "model.safetensors"))
    name = next(n for n in made_now if n.startswith("decoder.") and n.endswith("weight"))
    assert not torch.allclose(old[name], made_now[name], atol=1e-4)
    assert all(torch.allclose(fixed[n], made_now[n], atol=1e-5) for n in made_now)


def test_a_derived_row_replaces_only_a_folder_the_ablation_derived_before(tmp_path):
    import torch
    from ablation import clear_derived
    from safetensors.torch import save_file

    mine = tmp_path / "grid8-ema-raw"
    mine.mkdir()
    (mine / "notes.txt").write_text("a user's")
    with pytest.raises(SystemExit, match="was not made by the ablation"):
        clear_derived(mine)
    assert (mine / "notes.txt").read_text() == "a user's"
    derived = tmp_path / "grid8-ema-corrected"
    derived.mkdir()
    save_file({"w": torch.zeros(1)}, str(derived / "model.safetensors"), metadata={"corrected_average_of": "run"})
    clear_derived(derived)
    assert not derived.exists()


def test_release_targets_measure_raw_weights_apart_and_refuse_a_folder_without_training_state(
        folder_data, tmp_path, monkeypatch):
    import json

    from release_targets import run_release_targets
    from safetensors.torch import load_file

    from autoencoder.config import make_config
    from autoencoder.train import train

    run = train(make_config("smoke", steps=6, ema=0.9, checkpoint_every=6, log_every=6, sample_every=100,
                            data=str(folder_data), cache_dir=str(tmp_path / "cache"), out=str(tmp_path / "run")),
                progress=False)
    monkeypatch.chdir(tmp_path)  # the records go to outputs/bench under it
    shipped_like = tmp_path / "shipped"
    shipped_like.mkdir()
    (shipped_like / "model.safetensors").write_bytes((run / "model.safetensors").read_bytes())
    with pytest.raises(SystemExit, match="holds no training state"):
        run_release_targets(str(shipped_like), str(folder_data), str(tmp_path / "cache"), 0, 2, raw=True)
    run_release_targets(str(run), str(folder_data), str(tmp_path / "cache"), 0, 2, raw=True)
    record = json.loads((tmp_path / "outputs/bench/release_targets_raw.json").read_text())
    assert record["raw_weights"] and record["row"]["psnr_db"] > 0
    assert record["targets"]["guided prior P(class)"]["value"] is None  # a run folder holds no prior
    raw = load_file(str(tmp_path / "outputs/bench/run-raw/model.safetensors"))
    mean = load_file(str(run / "model.safetensors"))
    name = next(n for n in mean if n.startswith("decoder.") and n.endswith("weight"))
    assert not (raw[name] == mean[name]).all()  # the average of 6 steps is not the last step's weights


def test_true_class_probability_reads_real_images_and_their_reconstructions(smoke_run, tiny_evaluator, folder_data,
                                                                            tmp_path):
    import torch
    from prior_compare import true_class_probability

    from autoencoder.classifier import load_evaluator
    from autoencoder.data import load_cifar10, to_float
    from autoencoder.run_folder import load_run

    judge = load_evaluator(tiny_evaluator[0])
    nets = load_run(smoke_run, device="cpu").nets.float()
    test = load_cifar10(str(folder_data), "test", cache_dir=str(tmp_path / "cache"))
    got = true_class_probability(nets, judge, test.images, test.labels)
    p = judge.probabilities(to_float(test.images))
    assert got["real"] == pytest.approx(p[torch.arange(len(p)), test.labels].mean().item(), abs=1e-5)
    assert 0 < got["reconstructions"] < 1 and got["reconstructions"] != pytest.approx(got["real"], abs=1e-6)
    assert got["real_named_share"] == pytest.approx((p.argmax(1) == test.labels).float().mean().item())
    assert 0 <= got["reconstructions_named_share"] <= 1


def test_the_diversity_ceiling_spreads_at_least_as_far_as_the_kept_set_and_counts_only_the_share():
    import torch

    from autoencoder.classifier import load_evaluator
    from autoencoder.metrics import mean_pairwise_distance
    from compose_speed import diversity_ceiling

    g = torch.Generator().manual_seed(0)
    grey = torch.full((40, 3, 32, 32), 128, dtype=torch.uint8)
    varied = torch.randint(0, 256, (40, 3, 32, 32), generator=g, dtype=torch.uint8)
    images = torch.cat([grey, varied])  # ranks 0-39 one grey picture, 40-79 noise
    features = load_evaluator().features(images)
    terms = [{"horse": 0.5, "wings": 0.5 if r < 40 else 0.1} for r in range(80)]
    scores = {"candidates": [{"rank": r, "intent_terms": t} for r, t in enumerate(terms)], "rank_gate": 0.2}
    assert diversity_ceiling(features, scores, count=16) == 0.0  # the share is one picture: no spread to keep
    everything = diversity_ceiling(features, {**scores, "rank_gate": 0.0}, count=16)
    assert everything >= mean_pairwise_distance(features[32:48]) > 0  # no less than a kept 16 of grey and noise
    assert everything > mean_pairwise_distance(features[40:56])  # nor than 16 of the noise


def test_evaluator_reach_counts_real_pictures_and_composes_at_each_pair_of_bounds(folder_data, tmp_path):
    import json
    import subprocess

    import torch
    from evaluator_reach import bounds, reach_counts

    from autoencoder.cli import ConfigError

    horse = torch.tensor([0.7, 0.55, 0.45, 0.2])
    wings = torch.tensor([0.1, 0.3, 0.3, 0.7])
    assert reach_counts(horse, wings, [0.4, 0.6], [0.25]) == {"horse>=0.4,wings>=0.25": 2, "horse>=0.6,wings>=0.25": 0}
    assert bounds("0.3,0.6", "horse_bounds") == [0.3, 0.6]
    with pytest.raises(ConfigError, match="--wings_bounds must be numbers between 0 and 1"):
        bounds("0.2,2", "wings_bounds")

    composed = tmp_path / "composed"
    composed.mkdir()
    terms = [{"horse": 0.62, "wings": 0.3}, {"horse": 0.45, "wings": 0.3}, {"horse": 0.9, "wings": 0.01}]
    (composed / "scores.json").write_text(json.dumps({"candidates": [{"intent_terms": t} for t in terms]}))
    bench = Path(__file__).resolve().parents[1] / "bench" / "evaluator_reach.py"
    done = subprocess.run([sys.executable, str(bench), "--data", str(folder_data), "--cache_dir", str(tmp_path / "c"),
                           "--horse_bounds", "0.4,0.6", "--wings_bounds", "0.25", "--composes", str(composed)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "outputs/bench/evaluator_reach.json").read_text())
    assert record["composes"][str(composed)]["reach"] == {"horse>=0.4,wings>=0.25": 2, "horse>=0.6,wings>=0.25": 1}
    assert record["real"]["count"] > 0 and "horse>=0.6,wings>=0.25: real" in done.stdout
    bad = subprocess.run([sys.executable, str(bench), "--composes", str(tmp_path)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "is not a compose output" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_the_compose_bench_compares_a_variant_with_the_recipe_itself_and_refuses_an_unknown_side(monkeypatch,
                                                                                                   tmp_path, capsys):
    import compose_speed

    calls = []
    monkeypatch.setattr(compose_speed, "real_horses", lambda data, cache: None)
    monkeypatch.setattr(compose_speed, "fresh", lambda fn, *args: calls.append(args)
                        or {"folder": "", "seconds": 1.0, "stages": {}, "wall": 1.0})
    monkeypatch.setattr(compose_speed, "quality", lambda folder, real: {"kept candidates": []})
    monkeypatch.setattr(compose_speed, "stage_line", lambda result: "")
    monkeypatch.setattr(compose_speed, "print_fast_paths", lambda fast: None)
    monkeypatch.setattr(compose_speed, "verdicts", lambda old, new: {})
    monkeypatch.setattr(compose_speed, "write_record", lambda name, record: calls.append(("record", record)))
    compose_speed.run_compose_speed("run", "data", "cache", "pegasus", seeds=1, refine_all_check=False,
                                    recipes=True, against="recipe", extra={"repel": 1.0})
    flags = [args[-2] for args in calls if args[0] != "record" and isinstance(args[-2], dict)]
    assert {"seed": 0} in flags and {"repel": 1.0, "seed": 0} in flags  # the recipe alone, and the variant
    assert next(c[1] for c in calls if c[0] == "record")["against"] == "recipe"
    with pytest.raises(SystemExit) as exit_info:
        compose_speed.main(against="older", data=str(tmp_path))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--against must be old or recipe, got 'older'" in err and err.count("\n") == 1
