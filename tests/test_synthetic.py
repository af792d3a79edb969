"""Synthetic gradients: the modules, the complex network, serial and distributed training."""
import copy
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import datasets
from harness.launch import free_port, launch
from models import build_model
from models.training import evaluate, fit
from synthetic import ComplexNet, PipelineConfig, SyntheticGradient, train_serial
from synthetic.balance import Costs, LayerTimes, _timed, balanced_bounds, choose_bounds, measure_costs
from synthetic.distributed import stage_worker
from synthetic.peers import PeerConfig, ddp_worker, pipeline_worker
from tests.helpers import (
    ROOT,
    assert_true_gradients_equal_backprop,
    refused,
    result_of,
    run_failing,
    run_script,
    slow_checkpoints_stage_worker,
)

torch.set_num_threads(1)


def digits_net(arch="verlet", layers=4, h=0.5, conv=False, kind="linear", stages=2):
    torch.manual_seed(0)
    net = build_model(arch, (1, 8, 8), 10, layers, h, conv=conv, channels=3)
    return ComplexNet(net, stages, sg_kind=kind)


def test_a_module_learns_the_true_gradient_of_a_fixed_problem():
    data = datasets.load("DIGITS")
    cnet = digits_net(kind="mlp1")
    module = cnet.sg[0]
    opt = torch.optim.Adam(module.parameters(), lr=3e-3)

    def cut_and_gradient(xb, yb):
        with torch.no_grad():
            state = cnet.stage_forward(0, xb)
        inp = tuple(t.clone().requires_grad_() for t in state)
        F.cross_entropy(cnet.stage_forward(1, inp), yb).backward()
        return state, tuple(t.grad for t in inp)

    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        for xb, yb in datasets.batches(data.x_train, data.y_train, 64, generator=gen):
            state, true = cut_and_gradient(xb, yb)
            sg_loss, _, _ = module.loss(module(state, yb), yb, true)
            opt.zero_grad()
            sg_loss.backward()
            opt.step()
    state, true = cut_and_gradient(data.x_test, data.y_test)
    _, _, cos = module.loss(module(state, data.y_test), data.y_test, true)
    assert cos > 0.9
    pred = torch.cat([g.flatten() for g in module.synthetic(module(state, data.y_test), data.y_test)])
    assert F.cosine_similarity(pred, torch.cat([g.flatten() for g in true]), dim=0) > 0.9


@pytest.mark.parametrize("conv", [False, True], ids=["dense", "conv"])
def test_modules_start_at_zero_and_keep_the_state_shape(conv):
    cnet = digits_net(arch="leapfrog", conv=conv, kind="mlp2")
    x, y = torch.randn(5, 1, 8, 8), torch.randint(0, 10, (5,))
    state = cnet.stage_forward(0, x)
    pred = cnet.sg[0].synthetic(cnet.sg[0](state, y), y)
    assert len(pred) == 2 and all(p.shape == s.shape and (p == 0).all() for p, s in zip(pred, state))
    with pytest.raises(ValueError, match="valid: linear, mlp1, mlp2"):
        SyntheticGradient((4,), 1, 2, kind="mlp3")


@pytest.mark.parametrize("arch", ["resnet", "verlet", "leapfrog"])
@pytest.mark.parametrize("stages", [2, 3])
def test_true_gradients_through_the_cuts_equal_backprop(arch, stages):
    data = datasets.load("DIGITS")
    cnet = digits_net(arch=arch, layers=6, stages=stages)
    whole = assert_true_gradients_equal_backprop(cnet, data)
    assert not torch.equal(whole.K[0], digits_net(arch=arch, layers=6, stages=stages).net.K[0])


def test_synthetic_gradient_training_learns_digits_serially():
    data = datasets.load("DIGITS")
    cnet = digits_net(layers=8)
    hist = train_serial(cnet, data, PipelineConfig(rule="synthetic", epochs=8, lr=3e-3,
                                                   rule_options={"sg_learn_rate": 1e-3}))
    assert evaluate(cnet, data.x_test, data.y_test) >= 0.9 and hist["test_acc"][-1] >= 0.9
    assert hist["theoretical_s"][-1] < hist["seconds"][-1] and hist["sg_cos"][-1][0] > 0.2


@pytest.mark.parametrize("conv", [False, True], ids=["dense", "conv"])
def test_prolonging_the_sub_networks_keeps_the_output_close(conv):
    cnet = digits_net(layers=8, h=0.1, conv=conv)
    fine = cnet.prolong()
    assert fine.bounds == [(0, 8), (8, 16)] and fine.net.h == pytest.approx(0.05)
    x = datasets.load("DIGITS").x_test[:32]
    with torch.no_grad():
        rel = (fine(x) - cnet(x)).norm() / cnet(x).norm()
        state_c, state_f = cnet.stage_forward(0, x), fine.stage_forward(0, x)
    assert rel < 0.02
    assert (state_f[0] - state_c[0]).norm() / state_c[0].norm() < 0.02
    assert fine.sg[0] is not cnet.sg[0] and torch.equal(fine.sg[0].net[0].weight, cnet.sg[0].net[0].weight)


@pytest.mark.slow
def test_a_balanced_two_process_run_reaches_090_on_digits_and_accounts_its_time():
    data = datasets.load("DIGITS")
    cnet = digits_net(layers=8)
    bounds, costs = choose_bounds(cnet.net, data.x_train[:64], data.y_train[:64], 2, rule="synthetic", threads=1)
    cnet = cnet.with_bounds(bounds)
    out = launch(stage_worker, 2, (cnet, data, PipelineConfig(rule="synthetic", epochs=8, verbose=False)), threads=1)
    assert [tuple(b) for b in out["bounds"]] == bounds
    cnet.load_state_dict(out["state_dict"])
    assert evaluate(cnet, data.x_test, data.y_test) >= 0.9
    assert len(out["histories"][0]["sg_cos"]) == 8 and len(out["histories"][1]["loss"]) == 8
    assert out["histories"][1]["loss"][-1] < out["histories"][1]["loss"][0]
    for p in out["profiles"]:  # compute, waits and communication account for the stage's wall time
        accounted = p["busy_s"] + p["idle_s"] + p["communication_s"]  # the rest: per-epoch bookkeeping, and
        assert 0.9 * p["wall_s"] <= accounted <= p["wall_s"] * 1.0001  # a DIGITS epoch lasts about 50 ms
        assert p["timeline"] and {k for k, *_ in p["timeline"]} >= {"forward", "backward", "step"}
    assert out["profiles"][0]["kinds_s"]["module"] > 0 and out["profiles"][1]["kinds_s"]["wait input"] > 0
    mse = [m[0] for m in out["histories"][0]["sg_mse"]]  # the module's error at the cut falls as it learns
    assert mse[-1] < mse[0]


@pytest.mark.slow
def test_the_ranks_balance_their_cuts_and_checkpoints_are_not_training_time(tmp_path):
    """Every rank times the pieces where it runs and the ranks agree on the cuts (saved in
    split.json); checkpoint writes made 1 s slower leave the training time as it was."""
    data = datasets.load("DIGITS")
    data = datasets.Data(data.x_train[:512], data.y_train[:512], data.x_test, data.y_test, data.info)
    times = {}
    for worker in (stage_worker, slow_checkpoints_stage_worker):
        run_dir = tmp_path / worker.__name__
        cfg = PipelineConfig(rule="delayed", epochs=3, verbose=False, balance="cost", run_dir=str(run_dir),
                             checkpoint_every=1)
        out = launch(worker, 2, (digits_net(layers=8), data, cfg), threads=1)
        split = json.loads((run_dir / "split.json").read_text())
        assert split == out["split"] and [tuple(b) for b in split["bounds"]] == [tuple(b) for b in out["bounds"]]
        assert sum(split["layers_per_stage"]) == 8 and len(split["stage_ms"]) == 2
        assert max(split["stage_ms"]) <= max(split["even_stage_ms"]) + 1e-9  # never worse than the even split
        times[worker.__name__] = out["train_time_s"]
    assert abs(times["slow_checkpoints_stage_worker"] - times["stage_worker"]) < 1.5  # 3 x 1 s written


def _brute_force(costs, parts, multiple=1):
    n = len(costs.layers)
    cuts = [b for b in range(1, n) if b % multiple == 0]
    best = None
    for chosen in itertools.combinations(cuts, parts - 1):
        edges = [0, *chosen, n]
        worst = max(costs.stages(list(zip(edges, edges[1:]))))
        best = worst if best is None else min(best, worst)
    return best


@pytest.mark.parametrize("parts,multiple", [(2, 1), (3, 1), (2, 2), (3, 2)])
def test_the_cost_balanced_split_minimises_the_slowest_stage(parts, multiple):
    gen = torch.Generator().manual_seed(parts + 10 * multiple)
    for _ in range(20):
        n = 12
        costs = Costs([float(c) for c in torch.rand(n, generator=gen) + 0.5], first=0.3, last=0.8,
                      cuts={b: 1.5 + 0.1 * b for b in range(1, n)})
        bounds = balanced_bounds(costs, parts, multiple)
        assert bounds[0][0] == 0 and bounds[-1][1] == n and all(b % multiple == 0 for _, b in bounds[:-1])
        assert max(costs.stages(bounds)) == pytest.approx(_brute_force(costs, parts, multiple))


def test_the_module_on_stage_0_moves_the_cut_towards_it():
    costs = Costs([1.0] * 8, cuts={b: 2.0 for b in range(1, 8)})  # stage 0 also runs its module: 2 layers' worth
    assert balanced_bounds(costs, 2) == [(0, 3), (3, 8)] and costs.stages([(0, 3), (3, 8)]) == [5.0, 5.0]
    three = Costs([1.0] * 10, cuts={b: 2.0 for b in range(1, 10)})  # M = 3: the modules on stages 0 and 1
    assert balanced_bounds(three, 3) == [(0, 3), (3, 6), (6, 10)]
    assert three.stages([(0, 3), (3, 6), (6, 10)]) == [5.0, 5.0, 4.0]
    assert three.stages([(0, 4), (4, 7), (7, 10)]) == [6.0, 5.0, 3.0]  # the even split
    assert balanced_bounds(Costs([1.0] * 8), 2) == [(0, 4), (4, 8)]  # equal pieces: the even split


def test_the_pieces_are_timed_in_turns_so_a_drift_falls_on_all_alike():
    import time

    calls, waits = [], [0.01, 0.05, 0.03]
    pieces = [lambda k=k: (calls.append(k), time.sleep(waits[k])) for k in range(3)]
    medians = _timed(pieces, 4, torch.device("cpu"))
    assert calls == [0, 1, 2] * 6  # two unmeasured rounds, then four measured ones, each piece once per round
    for m, wait in zip(medians, waits):  # each piece's own known wait, not its neighbours'
        assert wait <= m < wait + 0.015


def test_a_piece_of_several_calls_gets_each_calls_median_and_a_whole_step_scales_the_shares():
    import time

    calls = []
    pieces = [lambda: calls.append("a"), (lambda: calls.append("f"), lambda: (calls.append("b"), time.sleep(0.02)))]
    single, (forward, backward) = _timed(pieces, 3, torch.device("cpu"))
    assert calls == ["a", "f", "b"] * 5 and single < 0.01 and forward < 0.01 and 0.02 <= backward < 0.035
    t = LayerTimes([1.0, 3.0], [2.0, 2.0], [0.0, 0.0], first=(0.0, 0.0, 0.0), last=(4.0, 4.0, 1.0))
    assert t.whole(1) == 5.0 and t.whole(3) == 9.0
    s = t.scaled((16.0, 4.0, 2.0))  # forward 8 -> 16, backward 8 -> 4, step 1 -> 2
    assert s.forward == [2.0, 6.0] and s.backward == [1.0, 1.0] and s.last == (8.0, 2.0, 2.0)


def test_a_cost_balanced_complex_network_with_true_gradients_equals_backprop():
    data = datasets.load("DIGITS")
    torch.manual_seed(0)
    net = build_model("verlet", (1, 8, 8), 10, 6, 0.5, conv=True, units=(2, 3))
    costs = measure_costs(net, data.x_train[:32], data.y_train[:32], rule="synthetic", repeats=2)
    assert len(costs.layers) == 6 and min(costs.layers) > 0 and set(costs.cuts) == set(range(1, 6))
    cnet = ComplexNet(net, 3).with_bounds([(0, 1), (1, 2), (2, 6)])  # uneven, one cut at the connective
    assert [m.state_shape for m in cnet.sg] == [(2, 8, 8), (2, 8, 8)]
    assert_true_gradients_equal_backprop(cnet, data)


@pytest.mark.parametrize("kind", ["linear", "mlp1"])
def test_one_module_pass_serves_the_synthetic_gradient_and_the_regression(kind):
    torch.manual_seed(0)
    module = SyntheticGradient((3, 4, 4), 2, 5, conv=True, kind=kind)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
    state = (torch.randn(6, 3, 4, 4), torch.randn(6, 3, 4, 4))
    y, true = torch.randint(0, 5, (6,)), (torch.randn(6, 3, 4, 4), torch.randn(6, 3, 4, 4))
    pred = module.start(state, y)
    for s, p in zip(module.synthetic(pred, y), module.synthetic(module(state, y), y)):
        torch.testing.assert_close(s, p)
    module.loss(module(state, y), y, true)[0].backward()
    expected = [p.grad.clone() for p in module.parameters()]
    module.zero_grad()
    opt = torch.optim.Adam(module.parameters(), 1e-2)
    opt.step()  # a step in between (a later batch's) leaves the kept graph valid
    module.loss(pred, y, true)[0].backward()
    for g, e in zip((p.grad for p in module.parameters()), expected):
        torch.testing.assert_close(g, e)


@pytest.mark.slow
@pytest.mark.parametrize("script", ["distSg"])  # distMulti's fine phase runs the same launch and stage worker
def test_a_failing_stage_ends_the_run_without_leftovers(tmp_path, script):
    proc, seconds, leftovers = run_failing(script, "--fail-stage", 1, "--results-dir", tmp_path)
    assert proc.returncode != 0
    assert "stage 1 made to fail" in proc.stderr and "Traceback" in proc.stderr
    assert seconds < 30 and leftovers == []


def _unpicklable(ctx):
    return (lambda: None) if ctx.rank == 0 else ctx.rank


def _rank(ctx):
    return ctx.rank


@pytest.mark.slow
def test_a_worker_whose_value_cannot_be_handed_back_fails_the_launch():
    """Workers that returned end without the interpreter's teardown only when their value
    reached the agent; rank 0's value here cannot be pickled: the launch fails, not hangs
    (run in a process of its own, so that a hang fails the test)."""
    code = ("import sys; sys.path.insert(0, '.'); from harness.launch import launch, WorkerFailed\n"
            "from tests.test_synthetic import _unpicklable\n"
            "try:\n    launch(_unpicklable, 2, (), threads=1, device='cpu')\n"
            "except WorkerFailed:\n    print('failed as it should')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                          text=True, timeout=60)
    assert "failed as it should" in proc.stdout, proc.stderr[-2000:]
    assert launch(_rank, 2, (), threads=1, device="cpu") == 0  # a value that travels: as before


@pytest.mark.slow
@pytest.mark.parametrize("script,args", [
    ("run_standard_sg", ["--epochs", 2]),
    ("testParallelNet", ["--epochs-c", 1, "--epochs-f", 1, "--sg-module", "mlp1"]),
    ("distSg", ["--epochs", 2, "--m", 3, "--n", 2, "--conv", 1, "--units", "4,8"]),
    ("distMulti", ["--epochs-c", 1, "--epochs-f", 1, "--conv", 1, "--units", "4,8"]),
])
def test_sg_scripts_run_end_to_end(tmp_path, script, args):
    res = result_of(run_script(script, *args, "--results-dir", tmp_path))
    assert res["train_acc"] > 0.3 and res["test_acc"] > 0.3 and res["train_time_s"] > 0
    if script in ("run_standard_sg", "testParallelNet"):
        assert 0 < res["theoretical_time_s"]
    (run_dir,) = (tmp_path / script).iterdir()
    assert (run_dir / "metrics.json").is_file() and any(run_dir.glob("*.png"))
    if script.startswith("dist"):  # the split, the per-stage profile and its timeline
        layers = 6 if script == "distSg" else 8
        assert sum(res["layers_per_stage"]) == layers and len(res["busy_fraction"]) == int(args[args.index("--m") + 1]
                                                                                         if "--m" in args else 2)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        profile = metrics["profile"] if script == "distSg" else metrics["fine"]["profile"]
        for p in profile:  # compute, waits and communication fit in the stage's wall time
            assert p["busy_s"] > 0 and p["busy_s"] + p["idle_s"] + p["communication_s"] <= p["wall_s"] * 1.0001
        assert profile[-1]["kinds_s"]["wait input"] > 0  # the last stage waits for its first input
        assert (run_dir / "timeline.png").stat().st_size > 5000 and (run_dir / "split.json").is_file()
        trace = json.loads((run_dir / "timeline.json").read_text())  # the same timeline as a Chrome trace
        assert {e["tid"] for e in trace["traceEvents"] if e["ph"] == "X"} == set(range(len(profile)))


@pytest.mark.parametrize("script", ["run_standard_sg", "distSg"])
@pytest.mark.parametrize("args,message", [
    (["--m", 1], "M (sub-networks) must be >= 2"),
    (["--n", 0], "N (layers) must be >= 1"),
    (["--sg-module", "mlp7"], "unknown SG_MODULE 'mlp7'; valid: linear, mlp1, mlp2"),
])
def test_sg_bad_values_exit_2(tmp_path, script, args, message):
    code, err = refused(script, *args, "--results-dir", tmp_path)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("script", ["distSg", "distMulti"])
def test_an_unknown_balance_exits_2_with_one_line(tmp_path, script):
    code, err = refused(script, "--balance", "nope", "--results-dir", tmp_path)
    assert code == 2 and err.strip() == "error: unknown BALANCE 'nope'; valid: cost, even"


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ddp", "gpipe", "1f1b"])
def test_the_torch_peers_train_the_same_network_as_backprop(engine):
    data = datasets.load("DIGITS")
    data = datasets.Data(data.x_train[:256], data.y_train[:256], data.x_test, data.y_test, data.info)
    torch.manual_seed(0)
    net = build_model("verlet", (1, 8, 8), 10, 6, 0.5)
    cfg = PeerConfig(epochs=1, lr=1e-2, batch_size=64, schedule=engine, microbatches=4, bounds=((0, 2), (2, 6)))
    out = launch(ddp_worker if engine == "ddp" else pipeline_worker, 2, (net, data, cfg), threads=1)
    whole = copy.deepcopy(net)
    fit(whole, data.x_train, data.y_train, epochs=1, lr=1e-2, batch_size=64, seed=0)  # the same batches
    trained = copy.deepcopy(net)
    trained.load_state_dict(out["state_dict"])
    assert out["train_time_s"] > 0
    for (name, a), b in zip(trained.named_parameters(), whole.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    assert not torch.equal(trained.K[0], net.K[0])


@pytest.mark.slow
def test_two_torchrun_agents_train_the_pipeline_as_two_machines_would(tmp_path):
    """Two torchrun agents (--nnodes 2, one process each) meet by c10d rendezvous on
    127.0.0.1, as two machines would on a network, and train distSg."""
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    command = [torchrun, "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
               "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", "two-agents",
               str(ROOT / "scripts" / "distSg.py"), "--epochs", 3, "--results-dir", tmp_path]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    agents = [subprocess.Popen(list(map(str, command)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=env, cwd=ROOT) for _ in range(2)]
    outputs = [a.communicate(timeout=240)[0] for a in agents]
    assert [a.returncode for a in agents] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    results = [line for o in outputs for line in o.splitlines() if line.startswith("RESULT ")]
    assert len(results) == 1  # rank 0's agent reports
    res = json.loads(results[0][len("RESULT "):])
    assert res["test_acc"] > 0.8 and len(res["busy_fraction"]) == 2
    config = json.loads((Path(res["run_dir"]) / "config.json").read_text())
    assert config["placement"] == {"backend": "gloo", "rank_devices": ["cpu", "cpu"]}
