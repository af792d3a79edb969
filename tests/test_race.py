"""The race (scripts/race.py): curves taken fairly, time to target, its outputs, TensorBoard."""
import io
import json
import time
from contextlib import redirect_stdout

import pytest
import torch

import datasets
from harness import race as racing
from models import build_model
from models.recording import Recorder, evaluate_points
from synthetic import ComplexNet, PipelineConfig, train_serial
from tests.helpers import refused, result_of, run_script


def _curve(accs, dt=2.0):
    return [{"seconds": dt * k, "epoch": 0.5 * k, "loss": None, "test_acc": a} for k, a in enumerate(accs)]


def test_time_to_target_is_the_first_point_at_or_above_it():
    curve = _curve([0.1, 0.6, 0.8, 0.79, 0.85, 0.9])
    assert racing.time_to_target(curve, 0.8) == (4.0, 1.0)  # the first arrival, not a later one
    assert racing.time_to_target(curve, 0.85) == (8.0, 2.0)
    assert racing.time_to_target(curve, 0.1) == (0.0, 0.0)
    assert racing.time_to_target(curve, 0.95) == (None, None)


def test_summary_speedups_and_a_trainer_that_never_arrives():
    runs = {"bp-all": [(_curve([0.1, 0.7, 0.8, 0.9]), 0.9)],  # final 0.9: bp-1 -> target 0.89, at 6 s
            "ddp": [(_curve([0.1, 0.8, 0.9, 0.9], dt=4.0), 0.9)],  # 8 s
            "pipeline-local": [(_curve([0.1, 0.9, 0.9, 0.9], dt=1.0), 0.9)],  # 1 s
            "pvd": [(_curve([0.1, 0.5, 0.6, 0.7]), 0.7)]}
    targets, summary = racing.summarise(runs, "bp-1")
    assert targets == [pytest.approx(0.89)]
    assert summary["pipeline-local"]["time_to_target_s"] == 1.0
    assert summary["pipeline-local"]["speedup_vs_all_cores"] == pytest.approx(6.0)
    assert summary["pipeline-local"]["speedup_vs_best_peer"] == pytest.approx(8.0)
    assert summary["bp-all"]["speedup_vs_best_peer"] == pytest.approx(8 / 6)
    assert summary["pvd"]["reached"] == 0 and summary["pvd"]["time_to_target_s"] is None
    assert summary["pvd"]["speedup_vs_all_cores"] is None
    assert summary["ddp"]["time_per_epoch_s"] == pytest.approx(8.0)  # 12 s for 1.5 epochs
    assert racing.winner(summary) == "pipeline-local"
    text = racing.table(summary, targets)
    assert "never" in text.splitlines()[-1] and text.splitlines()[0].endswith("0.8900")
    assert racing.summarise(runs, "0.95")[1]["bp-all"]["reached"] == 0


@pytest.mark.parametrize("text", ["1.5", "0", "bp", "bp-x", "bp--1", "fast"])
def test_a_target_that_means_nothing_is_refused(text):
    with pytest.raises(ValueError, match="TARGET must be"):
        racing.parse_target(text)


def test_a_recorder_does_not_count_evaluation_as_training_time(monkeypatch):
    """The serial pipeline evaluates the test set after every epoch; made to take 0.5 s
    longer each time, those seconds stay out of the curve's times."""
    import synthetic.pipeline as pipeline

    data = datasets.load("DIGITS")
    real = pipeline.evaluate

    def evaluate(*args):
        time.sleep(0.5)
        return real(*args)

    monkeypatch.setattr(pipeline, "evaluate", evaluate)
    torch.manual_seed(0)
    cnet = ComplexNet(build_model("verlet", data.info.shape, 10, 4, 0.5, width=64), 2)
    rec = Recorder(dict(cnet.named_parameters()), -(-len(data.y_train) // 64), 2)
    t0 = time.perf_counter()
    train_serial(cnet, data, PipelineConfig(rule="delayed", epochs=3, batch_size=64), recorder=rec)
    wall = time.perf_counter() - t0
    assert [p.epoch for p in rec.points] == [0, 0.5, 1, 1.5, 2, 2.5, 3]
    assert 0 < rec.points[-1].seconds <= wall - 3 * 0.5  # three slow evaluations, none of them counted
    curve = evaluate_points(cnet, rec.points, data.x_test, data.y_test)
    assert curve[0]["loss"] is None and all(p["loss"] > 0 for p in curve[1:])
    assert curve[-1]["test_acc"] == pytest.approx(real(cnet, data.x_test, data.y_test))


def test_a_run_for_its_times_alone_evaluates_no_point(monkeypatch):
    """The forecast's validation times each trainer's epochs: run_timed gives the points'
    seconds and epochs, and evaluates none of them."""
    data = datasets.load("DIGITS").head(256)
    race = racing.Race(build=lambda k, h: build_model("verlet", data.info.shape, 10, k, h, width=64), n_layers=2,
                       h=0.5, data=data, epochs=2, batch_size=64, lr=1e-3, points_per_epoch=1)
    monkeypatch.setattr(racing, "evaluate_points", lambda *a, **k: pytest.fail("a point was evaluated"))
    curve, about = racing.run_timed("bp-1t", race)
    assert [p["epoch"] for p in curve] == [0, 1, 2] and about == {}
    assert 0 <= curve[0]["seconds"] < curve[1]["seconds"] < curve[2]["seconds"]
    assert all("test_acc" not in p for p in curve)


def test_a_timed_run_keeps_no_parameters_and_a_race_balances_each_rules_cuts_once(monkeypatch):
    """A run timed for the validation copies no parameters at its points (a dense network's
    are tens of megabytes a point, handed back by every process); GPipe, 1F1B and the
    exact rule cut alike, and a trainer run again takes the cuts it took."""
    taken = []
    monkeypatch.setattr(racing, "fit", lambda *a, recorder, **k: (recorder.start(), recorder.epoch_end(),
                                                                   taken.append(recorder.points)))
    data = datasets.load("DIGITS").head(128)
    race = racing.Race(build=lambda k, h: build_model("verlet", data.info.shape, 10, k, h, width=64), n_layers=4,
                       h=0.5, data=data, epochs=1, batch_size=64, lr=1e-3, points_per_epoch=1)
    racing.run_timed("bp-1t", race)
    racing.run_trainer("bp-1t", race)
    assert [len(p.state) for p in taken[0]] == [0, 0] and all(len(p.state) > 0 for p in taken[1])
    timed = []
    monkeypatch.setattr(racing, "rank_costs", lambda *a, rule, **k: timed.append(rule) or rule)
    monkeypatch.setattr(racing, "balanced_bounds", lambda costs, m, multiple: [(0, 2), (2, 4)])
    net = race.network()
    cuts = [racing._cuts(race, net, rule) for rule in ("exact", "exact", "delayed", "exact")]
    assert timed == ["exact", "delayed"] and cuts[0] is cuts[1] is cuts[3] and cuts[0] == [(0, 2), (2, 4)]


def test_the_race_of_two_backprops_writes_its_outputs(tmp_path):
    from scripts import race

    out = io.StringIO()
    with redirect_stdout(out):
        race.main([str(a) for a in ("--dataset", "DIGITS", "--n", 4, "--width", 0, "--epochs", 2, "--batch-size", 64,
                                    "--trainers", "bp-1t,bp-all", "--target", "bp-1", "--seeds", "0,1",
                                    "--results-dir", tmp_path)])
    lines = out.getvalue().strip().splitlines()
    res = json.loads(lines[-1][len("RESULT "):])
    (run_dir,) = (tmp_path / "race").iterdir()
    saved = json.loads((run_dir / "race.json").read_text())
    assert set(saved["curves"]) == {"bp-1t", "bp-all"} and len(saved["curves"]["bp-all"]) == 2  # two seeds
    curve = saved["curves"]["bp-all"][0]
    assert [p["epoch"] for p in curve] == pytest.approx([0, 0.5, 1, 1.5, 2], abs=0.05)  # 10 of 21 batches: 0.48
    assert curve[-1]["test_acc"] > 0.85
    assert all(a["seconds"] < b["seconds"] for a, b in zip(curve, curve[1:]))
    # the same batches and weights: one thread and two give the same curve up to rounding
    assert saved["curves"]["bp-1t"][0][-1]["test_acc"] == pytest.approx(curve[-1]["test_acc"], abs=0.01)
    assert res["winner"] in ("bp-1t", "bp-all") and res["test_acc"] > 0.85 and res["run_dir"] == str(run_dir)
    assert (run_dir / "race.png").stat().st_size > 10000
    assert any("first to the target" in line for line in lines)
    scalars = _tensorboard(run_dir / "bp-all-seed0")
    assert [round(v, 6) for v in scalars["test_acc"]] == [round(p["test_acc"], 6) for p in curve]


def _tensorboard(path):
    """{tag: [values]} of the event files in ``path``, read with TensorBoard's reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_a_script_s_tensorboard_file_holds_what_it_printed(tmp_path):
    from scripts import verletTest

    out = io.StringIO()
    with redirect_stdout(out):
        verletTest.main(["--dataset", "DIGITS", "--epochs", "2", "--results-dir", str(tmp_path)])
    printed = [line.split() for line in out.getvalue().splitlines() if line.startswith("epoch")]
    (run_dir,) = (tmp_path / "verletTest").iterdir()
    scalars = _tensorboard(run_dir)
    assert [f"{v:.4f}" for v in scalars["loss"]] == [p[3] for p in printed]
    assert [f"{v:.4f}" for v in scalars["train_acc"]] == [p[6] for p in printed]
    assert [f"{v:.4f}" for v in scalars["test_acc"]] == [p[9] for p in printed]
    assert len(scalars["seconds"]) == 2
    with redirect_stdout(io.StringIO()):  # resumed for a third epoch: the same TensorBoard run, one file
        verletTest.main(["--resume", str(run_dir), "--epochs", "3"])
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    resumed = _tensorboard(run_dir)
    assert len(resumed["loss"]) == 3 and resumed["loss"][:2] == scalars["loss"]


@pytest.mark.parametrize("args,message", [
    (["--trainers", "bp-all,nope"], "unknown trainer 'nope'; valid: bp-1t, bp-all"),
    (["--trainers", "bp-all,bp-all"], "a trainer is named twice"),
    (["--target", "fast"], "TARGET must be an accuracy in (0, 1]"),
    (["--target", "bp-0.5", "--trainers", "ddp"], "TARGET bp-0.5 is relative to backprop"),
    (["--seeds", "0,x"], "SEEDS must be distinct seeds >= 0"),
    (["--trainers", "gpipe", "--target", "0.8", "--batch-size", 50], "does not split into MICROBATCHES=4"),
    (["--trainers", "multilevel-local", "--target", "0.8", "--n", 5], "N (5) must be even"),
])
def test_bad_race_input_exits_2_with_one_line(tmp_path, args, message):
    code, err = refused("race", "--dataset", "DIGITS", *args, "--results-dir", tmp_path / "res")
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "res").exists()


@pytest.mark.slow
def test_every_kind_of_trainer_races_on_digits(tmp_path):
    """The multi-process trainers (a torch peer, the pipeline, multilevel, PVD) give
    curves of the same epochs, starting from the same weights."""
    trainers = "bp-all,ddp,gpipe,pipeline-delayed,multilevel-local,pvd"
    res = result_of(run_script("race", "--dataset", "DIGITS", "--n", 4, "--width", 0, "--epochs", 3,
                               "--batch-size", 64, "--trainers", trainers, "--target", "0.85",
                               "--results-dir", tmp_path, timeout=600))
    saved = json.loads((next((tmp_path / "race").iterdir()) / "race.json").read_text())
    curves = {t: c[0] for t, c in saved["curves"].items()}
    assert set(curves) == set(trainers.split(","))
    for t, curve in curves.items():
        assert curve[-1]["epoch"] == pytest.approx(3, abs=0.2 if t == "pvd" else 1e-9), t  # pvd: whole iterations
        assert all(a["seconds"] <= b["seconds"] for a, b in zip(curve, curve[1:])), t
    start = {round(c[0]["test_acc"], 6) for t, c in curves.items() if not t.startswith("multilevel")}
    assert len(start) == 1  # the same initial weights (multilevel starts from its coarse network)
    for t in ("bp-all", "ddp", "gpipe", "pipeline-delayed"):
        assert curves[t][-1]["test_acc"] > 0.85, t
    assert curves["ddp"][-1]["test_acc"] == pytest.approx(curves["bp-all"][-1]["test_acc"], abs=0.02)
    assert res["summary"]["bp-all"]["reached"] == 1 and res["winner"] is not None
