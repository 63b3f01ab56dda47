"""Multi-process training: shares of a batch, and torchrun with 2 CPU processes (gloo) matching 1 process.

Tolerance of the 2-process vs 1-process comparison, in fp32: every logged loss and the
final weights within 1e-5 (measured: 1.2e-7 on losses, 5.7e-7 on weights after 8 steps;
the only difference is the order in which floats are summed).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import smoke_flags
from safetensors.torch import load_file

from autoencoder.cli import ConfigError
from autoencoder.config import make_config
from autoencoder.distributed import BatchSampler, Shard
from autoencoder.step import pair_partners
from autoencoder.train import check_shardable, train

TOLERANCE = 1e-5
REPO = Path(__file__).resolve().parents[1]


def test_shares_are_contiguous_disjoint_and_cover_the_batch():
    shares = [list(range(12))[Shard(rank, 3).part(12)] for rank in range(3)]
    assert shares == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]


def test_sampler_shares_make_up_the_one_process_batch():
    images = torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1)
    whole = BatchSampler(images, 8, seed=3)
    ranks = [BatchSampler(images, 8, seed=3, shard=Shard(r, 2)) for r in range(2)]
    for step in (0, 4, 7):  # across an epoch boundary (5 steps per epoch)
        assert torch.equal(torch.cat([s.batch(step) for s in ranks]), whole.batch(step))


def test_mixing_pairs_stay_inside_each_share():
    z = torch.arange(8.0).view(8, 1)
    partners = pair_partners(z).flatten().tolist()
    assert partners == [1, 0, 3, 2, 5, 4, 7, 6]
    assert torch.equal(pair_partners(pair_partners(z)), z)
    for rank in range(2):  # a rank's partners, computed on its own share, are the global ones
        part = Shard(rank, 2).part(8)
        assert pair_partners(z[part]).flatten().tolist() == partners[part]


def test_batch_that_cannot_be_shared_is_named():
    with pytest.raises(ConfigError, match="--batch_size 18 .* multiple of 4"):
        check_shardable(make_config("smoke", batch_size=18), Shard(0, 2))
    with pytest.raises(ConfigError, match="--batch_size must be even"):
        make_config("smoke", batch_size=15)


def torchrun(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "autoencoder.train", *args]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_training(run: Path, reference: Path) -> None:
    got, want = read_metrics(run), read_metrics(reference)
    assert [m["step"] for m in got] == [m["step"] for m in want]  # one line per step: rank 0 alone logs
    for a, b in zip(got, want):
        for key in b:
            if key.startswith(("loss/", "critic/", "eval/")):
                assert abs(a[key] - b[key]) < TOLERANCE, (a["step"], key, a[key], b[key])
    wa, wb = load_file(str(run / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for key in wb:
        assert (wa[key].float() - wb[key].float()).abs().max() < TOLERANCE, key


@pytest.fixture(scope="module")
def one_process_run(folder_data, tmp_path_factory) -> tuple[Path, list[str]]:
    """A 1-process fp32 smoke run of 8 steps and the flags that made it."""
    out = tmp_path_factory.mktemp("ddp") / "one"
    flags = dict(steps=8, log_every=1, checkpoint_every=4, sample_every=4, precision="fp32",
                 **smoke_flags(folder_data, out))
    train(make_config("smoke", **flags), progress=False)
    cli = ["--preset", "smoke"] + [f"--{k}={v}" for k, v in flags.items() if k != "out"]
    return out, cli


def test_two_processes_match_one_process_with_the_same_global_batch(one_process_run, tmp_path):
    reference, cli = one_process_run
    run = tmp_path / "two"
    done = torchrun(*cli, "--out", str(run))
    assert_same_training(run, reference)
    assert done.stdout.count("run folder:") == 1  # rank 0 alone prints
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_000004.png", "step_000008.png"]
    assert not any(p.name.startswith(".") for p in run.iterdir()), "a temporary file was left"


def test_two_process_run_stopped_by_the_clock_resumes_exactly(one_process_run, tmp_path):
    reference, cli = one_process_run
    run = tmp_path / "stopped"
    done = torchrun(*cli, "--out", str(run), "--max_minutes", "1e-6")  # both ranks stop at the first log step
    assert "stopped at step 1" in done.stderr
    assert [m["step"] for m in read_metrics(run)] == [1]
    paths = [flag for flag in cli if flag.startswith(("--data=", "--cache_dir="))]  # never read from config.json
    torchrun("--out", str(run), "--resume", "--max_minutes", "0", *paths)
    assert_same_training(run, reference)


ENDING = """
import sys
from pathlib import Path
from autoencoder.cli import lock_folder
from autoencoder.distributed import Shard, end_without_teardown

def body():
    lock_folder(Path(sys.argv[2]))
    sys.stdout.write("written without a newline")  # still in the buffer when the process ends
    {"ok": lambda: None, "exit2": lambda: sys.exit(2), "says": lambda: sys.exit("--steps must be positive"),
     "fails": lambda: 1 / 0}[sys.argv[1]]()

end_without_teardown(Shard(1, 2), body)
print("never printed: the process has ended")
"""


@pytest.mark.parametrize("how, status", [("ok", 0), ("exit2", 2), ("says", 1), ("fails", 1)])
def test_a_rank_ends_with_its_status_its_output_flushed_and_its_lock_dropped(tmp_path, how, status):
    folder = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", ENDING, how, str(folder)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == status, done.stderr
    assert done.stdout == "written without a newline"
    assert not (tmp_path / ".run.lock").exists(), "the folder's lock was left behind"
    assert ("ZeroDivisionError" in done.stderr) == (how == "fails")
    assert ("--steps must be positive" in done.stderr) == (how == "says")
