"""The experiment scripts end to end with tiny settings, and their handling of bad input."""
import json

import pytest
import torch

import datasets
from harness.configs import ArchitectureRun, ToyRun
from harness.experiment import build, load_data
from models import checkpoint
from models.training import evaluate
from tests.helpers import refused, result_of, run_script
from tests.test_data import write_mnist


@pytest.mark.slow
def test_verlet_script_on_digits_writes_its_run_directory(tmp_path):
    proc = run_script("verletTest", "--dataset", "DIGITS", "--epochs", 2, "--results-dir", tmp_path)
    res = result_of(proc)
    assert res["train_acc"] > 0.5 and res["test_acc"] > 0.5 and res["train_time_s"] > 0
    assert "epoch    2" in proc.stdout
    run = tmp_path / "verletTest"
    (run_dir,) = run.iterdir()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["constants"]["EPOCHS"] == 2 and config["constants"]["CHOICE"] == "verlet"
    assert config["torch"] and config["git_commit"] and config["seed"] == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert len(metrics["history"]["loss"]) == 2 and metrics["test_acc"] == res["test_acc"]
    assert (run_dir / "training.png").stat().st_size > 1000
    cfg = ArchitectureRun(**config["constants"])  # the saved weights, reloaded, give the reported accuracies
    model = build(cfg, "verlet", datasets.info("DIGITS"))
    model.load_state_dict(torch.load(run_dir / "model.pt", weights_only=True))
    data = load_data(cfg, log=lambda *a: None)
    assert evaluate(model, data.x_test, data.y_test) == pytest.approx(res["test_acc"], abs=1e-9)
    assert evaluate(model, data.x_train, data.y_train) == pytest.approx(res["train_acc"], abs=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("script", ["swiss", "ellipse"])
def test_toy_scripts_train_all_four_and_draw_them(tmp_path, script):
    res = result_of(run_script(script, "--epochs", 3, "--n", 3, "--results-dir", tmp_path))
    assert set(res["results"]) == {"resnet", "antisymmetric", "verlet", "leapfrog"}
    (run_dir,) = (tmp_path / script).iterdir()
    assert (run_dir / f"{script}.png").stat().st_size > 10000
    state, _ = checkpoint.load(run_dir)  # each architecture's final weights give the accuracy it reported
    cfg = ToyRun(**state["constants"])
    data = load_data(cfg, log=lambda *a: None)
    for arch, r in res["results"].items():
        model = build(cfg, arch, datasets.info(cfg.DATASET))
        model.load_state_dict(state["phases"][arch]["model"])
        assert evaluate(model, data.x_test, data.y_test) == pytest.approx(r["test_acc"], abs=1e-9), arch


@pytest.mark.slow
@pytest.mark.parametrize("script,choice", [("resTest", "r"), ("antiTest", "a"), ("leapTest", "l")])
def test_architecture_scripts_read_mnist_idx_files(tmp_path, script, choice):
    write_mnist(tmp_path / "data" / "MNIST" / "raw", n_train=64, n_test=16)
    res = result_of(run_script(script, "--epochs", 1, "--n", 2, "--conv", 1, "--units", "2,3",
                               "--data-root", tmp_path / "data", "--results-dir", tmp_path / "res"))
    assert res["dataset"] == "MNIST" and res["architecture"].startswith(choice)


@pytest.mark.parametrize("args,message", [
    (["--dataset", "IMAGENET"], "unknown dataset 'IMAGENET'; valid: ELLIPSE"),
    (["--choice", "q"], "unknown architecture 'q'; valid: resnet (r)"),
    (["--n", 0], "N (layers) must be >= 1"),
    (["--step", -0.1], "STEP (the step size h) must be > 0"),
    (["--batch-size", 0], "BATCH_SIZE must be >= 1"),
    (["--activation", "sigmoid"], "unknown ACTIVATION"),
    (["--dataset", "SWISS", "--conv", 1], "CONV needs an image dataset"),
    (["--data-root", "FILE"], "is not a readable directory"),
    (["--dataset", "MNIST", "--data-root", "EMPTY", "--epochs", 1], "put the four idx files"),
    (["--conv", "maybe"], "expected 0/1/true/false"),
])
def test_bad_values_exit_2_with_one_line(tmp_path, monkeypatch, args, message):
    (tmp_path / "FILE").write_text("x")
    (tmp_path / "EMPTY").mkdir()
    args = [str(tmp_path / a) if a in ("FILE", "EMPTY") else a for a in args]
    for name, value in {"no_proxy": "*", "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}.items():
        monkeypatch.setenv(name, value)
    code, err = refused("verletTest", *args, "--results-dir", tmp_path / "res")
    assert code == 2, err
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "res").exists()


@pytest.mark.slow
@pytest.mark.parametrize("script,args", [
    ("PVD", ["--dataset", "DIGITS", "--parallel", 0, "--iterations", 1, "--steps", 5]),
    ("run_standard_sg", ["--dataset", "ELLIPSE", "--epochs", 1]),
    ("verletTest", ["--dataset", "SWISS", "--epochs", 1]),
    ("swiss", ["--dataset", "ELLIPSE", "--epochs", 1, "--n", 2]),
])
def test_a_dataset_chosen_on_the_command_line_needs_no_other_change(tmp_path, script, args):
    from harness.rundir import RESULT_KEYS

    chosen = args[args.index("--dataset") + 1]
    proc = run_script(script, *args, "--results-dir", tmp_path)
    res = result_of(proc)
    assert set(RESULT_KEYS) <= set(res) and res["train_time_s"] > 0
    (run_dir,) = (tmp_path / script).iterdir()
    assert json.loads((run_dir / "config.json").read_text())["constants"]["DATASET"] == chosen
    assert chosen in proc.stdout.splitlines()[0] and (run_dir / "metrics.json").is_file()


def test_toy_scripts_refuse_image_sets_with_one_line(tmp_path):
    code, err = refused("ellipse", "--dataset", "DIGITS", "--results-dir", tmp_path)
    assert code == 2
    assert err.strip() == "error: this script trains on the toy sets ELLIPSE or SWISS, got DIGITS"
