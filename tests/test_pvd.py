"""Parallel Variable Distribution: the algorithm's properties, serial against parallel."""
import json

import pytest
import torch

import datasets
from harness.launch import launch
from models import build_model
from pvd import PVD, PVDConfig, layer_blocks, parallel_worker, run_serial
from tests.helpers import interrupt_after, refused, result_of, run_failing, run_script

torch.set_num_threads(1)


def setup(n_layers=4, arch="verlet", seed=0, **cfg):
    data = datasets.load("ELLIPSE", seed=seed)
    torch.manual_seed(seed)
    model = build_model(arch, (2,), 2, n_layers, 0.5, width=4)
    return model, data, PVDConfig(seed=seed, **cfg)


def test_layer_blocks_split_consecutive_layers():
    assert layer_blocks(8, 3) == [(0, 3), (3, 6), (6, 8)]
    assert layer_blocks(2, 2) == [(0, 1), (1, 2)]
    with pytest.raises(ValueError, match="NUM_PROC"):
        layer_blocks(3, 4)


def test_with_mu_zero_and_no_training_nothing_moves():
    model, data, cfg = setup(optimizer="sgd", lr=0.0, steps=3)
    pvd = PVD(model, data, cfg)
    d = pvd.unflatten(-pvd.direction_share(1, 0)[0])
    for l in range(cfg.num_proc):
        cand = pvd.solve(1, l, d)
        for name in pvd.names:
            assert torch.equal(cand[name], pvd.x[name]), name


def test_other_blocks_move_only_along_the_direction():
    model, data, cfg = setup(steps=20, lr=0.05)
    pvd = PVD(model, data, cfg)
    g, n = pvd.direction_share(1, 0)
    g1, _ = pvd.direction_share(1, 1)
    d = pvd.unflatten(-(g + g1) / n)
    cand = pvd.solve(1, 0, d)  # processor 0 owns block 0 (layers 0, 1) and the classifier
    moved_free = any(not torch.equal(cand[nm], pvd.x[nm]) for nm in pvd.names if pvd.group[nm] == 0)
    assert moved_free
    others = [nm for nm in pvd.names if pvd.group[nm] == 1]
    delta = torch.cat([(cand[nm] - pvd.x[nm]).flatten() for nm in others])
    direction = torch.cat([d[nm].flatten() for nm in others])
    assert delta.norm() > 0
    cos = torch.dot(delta, direction) / (delta.norm() * direction.norm())
    assert abs(abs(cos.item()) - 1) < 1e-5  # one scalar mu times d


@pytest.mark.parametrize("sync", ["best", "affine"])
def test_the_synchronised_point_is_the_best_candidate_or_better(sync):
    """The loss each iteration records is the training loss of the parameters it keeps
    (recomputed here on the whole training set); ``best`` keeps the candidate of least
    loss, ``affine`` a point of the candidates' affine hull that beats it."""
    from models.training import mean_loss

    model, data, cfg = setup(iterations=3, steps=10, sync=sync, target_acc=2.0)
    pvd = PVD(model, data, cfg)
    kept = []
    hist = pvd.run(on_iteration_end=lambda k, state, final: kept.append(
        mean_loss(pvd.model, data.x_train, data.y_train)))
    assert len(hist.iteration) == 3 and hist.loss[-1] < hist.loss[0]
    for loss, cands, winner, actual in zip(hist.loss, hist.candidate_loss, hist.winner, kept):
        assert loss == pytest.approx(actual, rel=1e-5)
        assert winner == min(range(len(cands)), key=cands.__getitem__)
        if sync == "best":
            assert loss == cands[winner]
        else:
            assert loss <= cands[winner]
    if sync == "affine":
        assert any(loss < min(cands) - 1e-4 for loss, cands in zip(hist.loss, hist.candidate_loss))


def test_pvd_reaches_095_on_ellipse():
    model, data, cfg = setup(n_layers=8, iterations=30, target_acc=0.95)
    hist = PVD(model, data, cfg).run()
    assert hist.test_acc[-1] >= 0.95
    assert hist.theoretical_time_s[-1] > 0 and len(hist.proc_time_s[-1]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("sync", ["best", "affine"])
def test_two_processes_give_the_serial_parameters(sync):
    model, data, cfg = setup(iterations=3, steps=15, sync=sync, target_acc=2.0)
    model_copy = build_model("verlet", (2,), 2, 4, 0.5, width=4)
    model_copy.load_state_dict(model.state_dict())
    serial = run_serial(model_copy, data, cfg)
    parallel = launch(parallel_worker, 2, (model, data, cfg, False), threads=1)
    for name, value in serial["state_dict"].items():
        torch.testing.assert_close(parallel["state_dict"][name], value, rtol=1e-5, atol=1e-6)
    assert parallel["history"]["winner"] == serial["history"]["winner"]
    assert not torch.equal(serial["state_dict"]["K.0"], model.state_dict()["K.0"])


@pytest.mark.slow
def test_a_failing_worker_ends_the_run_without_leftovers(tmp_path):
    proc, seconds, leftovers = run_failing("PVD", "--fail-rank", 1, "--results-dir", tmp_path)
    assert proc.returncode != 0
    assert "processor 1 made to fail" in proc.stderr and "Traceback" in proc.stderr
    assert seconds < 30
    assert leftovers == []


@pytest.mark.slow
def test_pvd_script_serial_mode_reports_a_time_split_that_adds_up(tmp_path):
    res = result_of(run_script("PVD", "--parallel", 0, "--iterations", 3, "--target-acc", 2, "--results-dir", tmp_path))
    (run_dir,) = (tmp_path / "PVD").iterdir()
    hist = json.loads((run_dir / "metrics.json").read_text())["history"]
    assert res["iterations"] == 3 and res["train_time_s"] == hist["train_time_s"][-1]
    # the theoretical time: per iteration the slowest processor plus the synchronisation
    assert res["theoretical_time_s"] == pytest.approx(sum(max(p) + s for p, s in zip(hist["proc_time_s"],
                                                                                      hist["sync_time_s"])))
    # the processors one after another, within the training clock, within the wall clock
    serial = sum(sum(p) + s for p, s in zip(hist["proc_time_s"], hist["sync_time_s"]))
    assert res["theoretical_time_s"] < serial <= res["train_time_s"] < res["wall_time_s"]


def test_pvd_training_time_leaves_out_accuracies_and_checkpoints(monkeypatch):
    """Accuracies and checkpoints made 0.2 s slower each: the wall clock holds all of it,
    the training clock none."""
    import time

    model, data, cfg = setup(iterations=3, steps=5, target_acc=2.0)
    pvd = PVD(model, data, cfg)
    correct = pvd.correct
    monkeypatch.setattr(pvd, "correct", lambda x, y: (time.sleep(0.2), correct(x, y))[1])
    hist = pvd.run(on_iteration_end=lambda k, state, final: time.sleep(0.2))
    # by the last iteration's wall time: 3 iterations x 2 accuracies, and the checkpoints of the first 2
    injected = 3 * 2 * 0.2 + 2 * 0.2
    assert hist.wall_time_s[-1] - hist.train_time_s[-1] >= injected - 0.02
    # no sleep in an iteration's training time: each iteration's wall time exceeds it by at least its 2 accuracies'
    untimed = [(w1 - w0) - (t1 - t0) for w0, w1, t0, t1 in zip(hist.wall_time_s, hist.wall_time_s[1:],
                                                                 hist.train_time_s, hist.train_time_s[1:])]
    assert untimed and all(u >= 2 * 0.2 - 0.02 for u in untimed), untimed


@pytest.mark.parametrize("args,message", [
    (["--num-proc", 0], "NUM_PROC must be >= 1"),
    (["--num-proc", 9], "NUM_PROC (9) cannot exceed the number of layers N (8)"),
    (["--sync", "worst"], "unknown SYNC 'worst'; valid: best, affine"),
])
def test_pvd_bad_values_exit_2(tmp_path, args, message):
    code, err = refused("PVD", *args, "--results-dir", tmp_path)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not tmp_path.joinpath("PVD").exists()


@pytest.mark.slow
@pytest.mark.parametrize("script,args,first_line", [
    ("PVD", ["--iterations", 10000, "--target-acc", 2], "iter   2"),
    ("distSg", ["--epochs", 10000], "stage 1: epoch   2"),
])
def test_ctrl_c_stops_every_process(tmp_path, script, args, first_line):
    code, seconds, leftovers, output = interrupt_after(script, *args, "--results-dir", tmp_path, wait_for=first_line)
    assert first_line in output
    assert code == 130, output[-2000:]
    assert seconds < 30 and leftovers == []
