"""The race's trainers and the pipeline end to end on CUDA: every rank on one GPU over gloo
(a one-GPU machine), and one GPU per rank over NCCL (two or more).  Skipped without CUDA."""
import json

import pytest
import torch

from tests.helpers import result_of, run_script

GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(GPUS == 0, reason="needs CUDA (no GPU on this machine)")]

SHARED = "bp-all,ddp,pipeline-delayed,pipeline-local,multilevel-local,pvd"  # gloo can carry these on one GPU
PER_RANK = SHARED + ",gpipe,1f1b"  # torch.distributed.pipelining needs NCCL on GPUs


def _config(tmp_path, script):
    return json.loads((next((tmp_path / script).iterdir()) / "config.json").read_text())


@pytest.mark.parametrize("layout", ["shared", "per-rank"])
def test_the_race_trainers_run_on_cuda(tmp_path, layout):
    if layout == "per-rank" and GPUS < 2:
        pytest.skip("one GPU per rank needs 2 GPUs")
    device = "cuda:0" if layout == "shared" else "cuda"
    trainers = SHARED if layout == "shared" else PER_RANK
    res = result_of(run_script("race", "--device", device, "--dataset", "DIGITS", "--n", 4, "--width", 0,
                               "--epochs", 3, "--batch-size", 64, "--trainers", trainers, "--target", "0.85",
                               "--results-dir", tmp_path, timeout=600))
    placement = _config(tmp_path, "race")["placement"]
    assert placement["backend"] == ("gloo" if layout == "shared" else "nccl")
    assert placement["rank_devices"] == (["cuda:0", "cuda:0"] if layout == "shared" else ["cuda:0", "cuda:1"])
    for t in ("bp-all", "ddp", "pipeline-delayed"):
        assert res["summary"][t]["final_test_acc"] > 0.85, t


@pytest.mark.parametrize("rule", ["delayed", "synthetic"])
def test_the_distributed_pipeline_on_cuda_keeps_its_stages_busy(tmp_path, rule):
    res = result_of(run_script("distSg", "--device", "cuda", "--rule", rule, "--epochs", 3, "--results-dir", tmp_path))
    placement = _config(tmp_path, "distSg")["placement"]
    assert all(d.startswith("cuda") for d in placement["rank_devices"])
    assert res["test_acc"] > 0.8 and all(0 < b <= 1 for b in res["busy_fraction"])
