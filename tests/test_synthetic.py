"""Synthetic gradients: the modules, the complex network, serial and distributed training."""
import copy

import pytest
import torch
import torch.nn.functional as F

import datasets
from models import build_model
from models.training import evaluate, make_optimizer
from scripts.launch import launch
from synthetic import ComplexNet, SGTrainer, SyntheticGradient
from synthetic.distributed import DistSGConfig, stage_worker
from tests.helpers import result_of, run_failing, run_script

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
            sg_loss, _, _ = module.regress(state, yb, true)
            opt.zero_grad()
            sg_loss.backward()
            opt.step()
    state, true = cut_and_gradient(data.x_test, data.y_test)
    _, _, cos = module.regress(state, data.y_test, true)
    assert cos > 0.9
    pred = torch.cat([g.flatten() for g in module.predict(state, data.y_test)])
    assert F.cosine_similarity(pred, torch.cat([g.flatten() for g in true]), dim=0) > 0.9


@pytest.mark.parametrize("conv", [False, True], ids=["dense", "conv"])
def test_modules_start_at_zero_and_keep_the_state_shape(conv):
    cnet = digits_net(arch="leapfrog", conv=conv, kind="mlp2")
    x, y = torch.randn(5, 1, 8, 8), torch.randint(0, 10, (5,))
    state = cnet.stage_forward(0, x)
    pred = cnet.sg[0].predict(state, y)
    assert len(pred) == 2 and all(p.shape == s.shape and (p == 0).all() for p, s in zip(pred, state))
    with pytest.raises(ValueError, match="valid: linear, mlp1, mlp2"):
        SyntheticGradient((4,), 1, 2, kind="mlp3")


@pytest.mark.parametrize("arch", ["resnet", "verlet", "leapfrog"])
@pytest.mark.parametrize("stages", [2, 3])
def test_true_gradients_through_the_cuts_equal_backprop(arch, stages):
    data = datasets.load("DIGITS")
    cnet = digits_net(arch=arch, layers=6, stages=stages)
    whole = copy.deepcopy(cnet.net)
    trainer = SGTrainer(cnet, lr=1e-2, sg_lr=1e-3, true_gradients=True)
    opt = make_optimizer("adam", whole.parameters(), 1e-2)
    for xb, yb in [(data.x_train[:64], data.y_train[:64]), (data.x_train[64:128], data.y_train[64:128])]:
        trainer.train_batch(xb, yb)
        opt.zero_grad()
        F.cross_entropy(whole(xb), yb).backward()
        opt.step()
    for (name, a), b in zip(cnet.net.named_parameters(), whole.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(whole.K[0], digits_net(arch=arch, layers=6, stages=stages).net.K[0])


def test_synthetic_gradient_training_learns_digits_serially():
    data = datasets.load("DIGITS")
    cnet = digits_net(layers=8)
    trainer = SGTrainer(cnet, lr=3e-3, sg_lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(8):
        stats = trainer.train_epoch(data.x_train, data.y_train, 64, gen)
    assert evaluate(cnet, data.x_test, data.y_test) >= 0.9
    assert stats["theoretical_s"] < stats["seconds"] and stats["sg_cos"][0] > 0.2


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
def test_two_process_distributed_run_reaches_090_on_digits():
    data = datasets.load("DIGITS")
    cnet = digits_net(layers=8)
    out = launch(stage_worker, 2, (cnet, data, DistSGConfig(epochs=8, verbose=False)), threads=1)
    cnet.load_state_dict(out["state_dict"])
    assert evaluate(cnet, data.x_test, data.y_test) >= 0.9
    assert len(out["histories"][0]["sg_cos"]) == 8 and len(out["histories"][1]["loss"]) == 8
    assert out["histories"][1]["loss"][-1] < out["histories"][1]["loss"][0]


@pytest.mark.slow
@pytest.mark.parametrize("script", ["distSg", "distMulti"])
def test_a_failing_stage_ends_the_run_without_leftovers(tmp_path, script):
    proc, seconds, leftovers = run_failing(script, "--fail-stage", 1, "--results-dir", tmp_path)
    assert proc.returncode != 0
    assert "stage 1 made to fail" in proc.stderr and "Traceback" in proc.stderr
    assert seconds < 30 and leftovers == []


@pytest.mark.slow
@pytest.mark.parametrize("script,args", [
    ("run_standard_sg", ["--epochs", 2]),
    ("testParallelNet", ["--epochs-c", 1, "--epochs-f", 1, "--sg-module", "mlp1"]),
    ("distSg", ["--epochs", 2, "--m", 3, "--n", 2, "--conv", 1, "--units", "4,8"]),
    ("distMulti", ["--epochs-c", 1, "--epochs-f", 1, "--conv", 1, "--units", "4,8"]),
])
def test_sg_scripts_run_end_to_end(tmp_path, script, args):
    res = result_of(run_script(script, *args, "--results-dir", tmp_path))
    assert 0 <= res["train_acc"] <= 1 and 0.3 < res["test_acc"] <= 1 and res["train_time_s"] > 0
    if script in ("run_standard_sg", "testParallelNet"):
        assert 0 < res["theoretical_time_s"]
    (run_dir,) = (tmp_path / script).iterdir()
    assert (run_dir / "metrics.json").is_file() and any(run_dir.glob("*.png"))


@pytest.mark.parametrize("script", ["run_standard_sg", "distSg"])
@pytest.mark.parametrize("args,message", [
    (["--m", 1], "M (sub-networks) must be >= 2"),
    (["--n", 0], "N (layers) must be >= 1"),
    (["--sg-module", "mlp7"], "unknown SG_MODULE 'mlp7'; valid: linear, mlp1, mlp2"),
])
def test_sg_bad_values_exit_2(tmp_path, script, args, message):
    proc = run_script(script, *args, "--results-dir", tmp_path)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
