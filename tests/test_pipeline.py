"""The pipeline's rules: exact equals backprop, serial equals distributed, the delayed and
replayed updates, local sends nothing back, every rule learns."""
import copy

import pytest
import torch

import datasets
from harness.launch import launch
from models import build_model
from models.training import evaluate, fit
from synthetic import RULES, ComplexNet, PipelineConfig, train_serial
from synthetic.balance import measure_costs
from synthetic.distributed import stage_worker
from synthetic.profile import StageProfile
from synthetic.rules import REGISTRY, Accumulated, Delayed, LocalDelayed, LocalHead, PipeMare, Predicted, Replay
from synthetic.stage import Stage, run_alone
from tests.helpers import refused

torch.set_num_threads(1)


def digits(samples=256, dtype=torch.float64):
    data = datasets.load("DIGITS")
    return datasets.Data(data.x_train[:samples].to(dtype), data.y_train[:samples], data.x_test.to(dtype),
                         data.y_test, data.info)


def network(conv=False, layers=6, dtype=torch.float64):
    torch.manual_seed(0)
    kw = {"conv": True, "units": (2, 3)} if conv else {"width": 64}
    return build_model("verlet", (1, 8, 8), 10, layers, 0.5, **kw).to(dtype)


# multi-unit: layers 0-2 in the first unit, the connective layer with layer 3
NETWORKS = {"dense": (False, [(0, 3), (3, 6)], [(0, 2), (2, 4), (4, 6)]),
            "conv": (True, [(0, 3), (3, 6)], [(0, 1), (1, 3), (3, 6)])}


def backprop(net, data, epochs, lr=3e-3):
    whole = copy.deepcopy(net)
    fit(whole, data.x_train, data.y_train, epochs=epochs, lr=lr, batch_size=64, seed=0)
    return whole


def assert_same(a, b, tol=1e-5):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=tol, atol=tol, msg=name)


@pytest.mark.parametrize("kind", NETWORKS)
@pytest.mark.parametrize("stages", [2, 3])
def test_exact_rule_in_one_process_is_backprop(kind, stages):
    conv, *bounds = NETWORKS[kind]
    data, net = digits(), network(conv)
    cnet = ComplexNet(copy.deepcopy(net), stages, bounds=bounds[stages - 2])
    train_serial(cnet, data, PipelineConfig(rule="exact", epochs=2, lr=3e-3))
    assert_same(cnet.net, backprop(net, data, 2), tol=1e-10)


BUILT_IN = tuple(n for n, cls in REGISTRY.items() if cls.__module__ == "synthetic.rules")  # not a test's


def _distributed(net, stages, bounds, data, **cfg):
    cnet = ComplexNet(copy.deepcopy(net), stages, bounds=bounds)
    out = launch(stage_worker, stages, (cnet, data, PipelineConfig(verbose=False, **cfg)), threads=1)
    cnet.load_state_dict(out["state_dict"])
    return cnet, out


@pytest.mark.slow
@pytest.mark.parametrize("kind", NETWORKS)
@pytest.mark.parametrize("stages", [2, 3])
def test_exact_rule_on_processes_is_backprop(kind, stages):
    conv, *bounds = NETWORKS[kind]
    data, net = digits(), network(conv)
    cnet, out = _distributed(net, stages, bounds[stages - 2], data, rule="exact", epochs=2, lr=3e-3)
    assert_same(cnet.net, backprop(net, data, 2))
    assert all(m["gradient"] == 2 * 4 for m in out["messages"][1:])  # 2 epochs of 4 batches, back from each stage


@pytest.mark.slow
@pytest.mark.parametrize("rule", BUILT_IN)
def test_one_process_and_several_give_the_same_parameters(rule):
    data, net = digits(), network()
    bounds = [(0, 2), (2, 4), (4, 6)]
    serial = ComplexNet(copy.deepcopy(net), 3, bounds=bounds)
    # the rules' default delay: that of a busy pipeline, 2 batches at stage 0 and 1 at stage 1
    hist = train_serial(serial, data, PipelineConfig(rule=rule, epochs=2, lr=3e-3))
    cnet, out = _distributed(net, 3, bounds, data, rule=rule, epochs=2, lr=3e-3)
    assert_same(cnet.net, serial.net)
    assert rule == "exact" or not torch.allclose(cnet.net.K[0], backprop(net, data, 2).K[0])
    sends = REGISTRY[rule].receives_gradients
    assert [m["gradient"] for m in out["messages"][1:]] == [2 * 4 if sends else 0] * 2  # 2 epochs of 4 batches
    assert hist["messages"] == {"state": 2 * 2 * 4, "gradient": 2 * 2 * 4 if sends else 0}
    for profile in out["profiles"][:-1]:  # each rule's own kinds of work on the stages before a cut
        kinds = profile["kinds_s"]
        assert {k for k in kinds if k not in ("forward", "backward", "step", "send", "wait gradient", "wait input")} \
            == set(REGISTRY[rule].kinds) and all(kinds[k] > 0 for k in REGISTRY[rule].kinds)


class Given:
    """A transport of one stage that hands out given gradients at its output."""

    def __init__(self, grads):
        self.grads, self.sent = grads, {"state": 0, "gradient": 0}

    def send_state(self, b, state, labels):
        self.sent["state"] += 1

    def expect_grad(self, b, nb):
        pass

    def recv_grad(self, b):
        return self.grads[b]
        yield

    def send_grad(self, b, grads):
        self.sent["gradient"] += 1

    def flush(self):
        pass


def _gradient_at(cnet, params, x, delta):
    """(dh/dtheta at ``params``)^T delta for stage 0 of ``cnet`` on batch x."""
    probe = copy.deepcopy(cnet)
    mine = probe.stage_parameters(0)
    with torch.no_grad():
        for p, v in zip(mine, params):
            p.copy_(v)
    out = probe.stage_forward(0, x)
    return torch.autograd.grad(out, mine, delta)


def _late_stage(rule, batches):
    """Stage 0 of a tiny network under ``rule`` with SGD at lr 1, fed ``batches`` random
    batches and given gradients; returns (cnet, inputs, gradients, the weights before
    the first batch and after each, the stage)."""
    torch.manual_seed(0)
    cnet = ComplexNet(build_model("resnet", (4,), 3, 2, 0.5, width=4), 2)
    xs = [torch.randn(5, 4) for _ in range(batches)]
    deltas = [(torch.randn(5, 4),) for _ in range(batches)]
    labels = torch.zeros(5, dtype=torch.long)
    stage = Stage(cnet, 0, rule, Given(deltas), lr=1.0, optimizer="sgd", profile=StageProfile(torch.device("cpu")))
    weights = [[p.detach().clone() for p in stage.params]]
    for b in range(batches):
        run_alone(stage.batch(b, xs[b], labels))
        weights.append([p.detach().clone() for p in stage.params])
    return cnet, xs, deltas, weights, stage


@pytest.mark.parametrize("rule_class", [Delayed, Replay])
def test_a_late_gradient_is_taken_at_the_forward_weights_or_the_current_ones(rule_class, float64):
    """SGD with lr 1 makes the update the gradient itself.  With k = 1 the update after
    batch t is the gradient of batch t - 1: delayed at the weights of t - 1's forward pass,
    replay at the current weights."""
    cnet, xs, deltas, weights, _ = _late_stage(rule_class(max_in_flight=1), 3)
    assert all(torch.equal(a, b) for a, b in zip(weights[1], weights[0]))  # batch 0: nothing applied yet
    g0 = _gradient_at(cnet, weights[0], xs[0], deltas[0])
    for now, before, g in zip(weights[2], weights[1], g0):
        torch.testing.assert_close(now, before - g)
    forward_weights = weights[0] if rule_class is Delayed else weights[2]  # batch 1 ran its forward at theta_0
    g1 = _gradient_at(cnet, forward_weights, xs[1], deltas[1])
    for now, before, g in zip(weights[3], weights[2], g1):
        torch.testing.assert_close(now, before - g)
    assert not all(torch.allclose(a, b) for a, b in zip(g1, _gradient_at(cnet, weights[2 if rule_class is Delayed
                                                                                    else 0], xs[1], deltas[1])))


def test_a_predicted_forward_runs_k_steps_ahead_along_the_last_update(float64):
    """SGD with lr 1 and no momentum, k = 1: the forward pass of batch t runs at
    theta^t - g, g the last gradient applied (none before the first step); its gradient
    is applied one batch later to the weights of then."""
    cnet, xs, deltas, weights, _ = _late_stage(Predicted(max_in_flight=1), 4)
    g0 = _gradient_at(cnet, weights[0], xs[0], deltas[0])  # batches 0 and 1 ran forward at theta_0
    g1 = _gradient_at(cnet, weights[0], xs[1], deltas[1])
    for now, before, g in zip(weights[3], weights[2], g1):
        torch.testing.assert_close(now, before - g)
    predicted = [w - g for w, g in zip(weights[2], g0)]  # batch 2: theta_2 - g_0
    g2 = _gradient_at(cnet, predicted, xs[2], deltas[2])
    for now, before, g in zip(weights[4], weights[3], g2):
        torch.testing.assert_close(now, before - g)
    delayed = _gradient_at(cnet, weights[2], xs[2], deltas[2])  # what delayed would have applied
    assert not all(torch.allclose(a, b) for a, b in zip(g2, delayed))


def _steps(before, after, *updates):
    """Assert after = before - sum(updates), parameter by parameter."""
    for k, (now, then) in enumerate(zip(after, before)):
        torch.testing.assert_close(now, then - sum(u[k] for u in updates))


def test_pipemare_recomputes_at_the_weights_extrapolated_back_with_its_rate_by_delay(float64):
    """SGD, lr 1, k = 2, K = 2 warm-up steps, gamma = 1/4.  Step s has lr 2^-(1 - s/2):
    1/2, then 2^-1/2.  The first late gradient (batch 0) is taken at theta_0 (d = 0); the
    second (batch 1) at u = theta - 2 d, d = (3/4)(theta_3 - theta_0) after one step."""
    cnet, xs, deltas, weights, _ = _late_stage(PipeMare(max_in_flight=2, warmup=2, decay=0.25), 4)
    assert all(torch.equal(a, b) for a, b in zip(weights[2], weights[0]))  # batches 0, 1: nothing applied
    g0 = _gradient_at(cnet, weights[0], xs[0], deltas[0])
    _steps(weights[2], weights[3], [0.5 * g for g in g0])
    back = [w - 2 * 0.75 * (w - w0) for w, w0 in zip(weights[3], weights[0])]
    g1 = _gradient_at(cnet, back, xs[1], deltas[1])
    _steps(weights[3], weights[4], [2 ** -0.5 * g for g in g1])
    replay = _gradient_at(cnet, weights[3], xs[1], deltas[1])  # what replay would have applied
    assert not all(torch.allclose(a, b) for a, b in zip(g1, replay))


def test_accumulated_steps_on_the_mean_of_a_late_gradients(float64):
    """SGD, lr 1, k = 1, A = 2: batches 0 and 1 ran forward at theta_0; their mean
    gradient is the step after batch 2; batch 2 (at theta_0) and 3 (at theta_3) give the
    step after batch 4; batches 1 and 3 leave the weights alone."""
    cnet, xs, deltas, weights, _ = _late_stage(Accumulated(max_in_flight=1, accumulate=2), 5)
    assert all(torch.equal(a, b) for a, b in zip(weights[2], weights[0]))
    g0, g1 = (_gradient_at(cnet, weights[0], xs[b], deltas[b]) for b in (0, 1))
    _steps(weights[2], weights[3], [g / 2 for g in g0], [g / 2 for g in g1])
    assert all(torch.equal(a, b) for a, b in zip(weights[4], weights[3]))
    g2, g3 = _gradient_at(cnet, weights[0], xs[2], deltas[2]), _gradient_at(cnet, weights[3], xs[3], deltas[3])
    _steps(weights[4], weights[5], [g / 2 for g in g2], [g / 2 for g in g3])


def _local_gradient_at(cnet, params, x, head, labels):
    """d/dtheta CE(H(h(x; theta)), y) for stage 0 of ``cnet`` at ``params``."""
    probe = copy.deepcopy(cnet)
    mine = probe.stage_parameters(0)
    with torch.no_grad():
        for p, v in zip(mine, params):
            p.copy_(v)
    loss = torch.nn.functional.cross_entropy(head(probe.stage_forward(0, x)[0]), labels)
    return torch.autograd.grad(loss, mine)


def test_local_delayed_adds_lambda_times_the_fresh_local_gradient_to_the_late_one(float64):
    """SGD, lr 1, k = 1, lambda = 1/2: the first step (after batch 1) is the late gradient
    of batch 0 plus half the local gradients of batches 0 and 1, all at theta_0 and the
    head's first weights."""
    cnet, xs, deltas, weights, stage = _late_stage(LocalDelayed(max_in_flight=1, mix=0.5), 2)
    head = LocalHead.of(stage).double()  # the stage's head before its first step: drawn alike
    labels = torch.zeros(5, dtype=torch.long)
    g0 = _gradient_at(cnet, weights[0], xs[0], deltas[0])
    l0, l1 = (_local_gradient_at(cnet, weights[0], xs[b], head, labels) for b in (0, 1))
    _steps(weights[1], weights[2], g0, [g / 2 for g in l0], [g / 2 for g in l1])
    assert not all(torch.allclose(a, b - g) for a, b, g in zip(weights[2], weights[1], g0))


def test_the_local_rule_sends_no_gradient_back_and_a_hybrid_finish_does():
    data = digits(dtype=torch.float32)
    hist = train_serial(ComplexNet(network(dtype=torch.float32), 3), data, PipelineConfig(rule="local", epochs=1))
    assert hist["messages"] == {"state": 2 * 4, "gradient": 0}  # 4 batches through 2 cuts
    hist = train_serial(ComplexNet(network(dtype=torch.float32), 3), data,
                        PipelineConfig(rule="local", epochs=2, exact_epochs=1))
    assert hist["messages"] == {"state": 2 * 8, "gradient": 2 * 4}  # the exact last epoch sends them
    assert hist["head_loss"][0] and not hist["head_loss"][1]


@pytest.mark.parametrize("rule", BUILT_IN)
def test_every_rule_trains_digits(rule):
    """Every rule learns (in one process: the test above shows processes do the same)."""
    data = datasets.load("DIGITS")
    torch.manual_seed(0)
    cnet = ComplexNet(build_model("verlet", (1, 8, 8), 10, 8, 0.5), 2)
    train_serial(cnet, data, PipelineConfig(rule=rule, epochs=6, lr=3e-3))
    assert evaluate(cnet, data.x_test, data.y_test) >= 0.9, rule


def test_each_rule_costs_what_it_makes_a_stage_do():
    data = datasets.load("DIGITS")
    net = network(dtype=torch.float32)
    x, y = data.x_train[:32], data.y_train[:32]
    costs = {rule: measure_costs(net, x, y, rule=rule, repeats=1)
             for rule in ("exact", "synthetic", "replay", "local", "local-delayed")}
    assert not costs["exact"].cuts and not costs["exact"].layer_extra
    assert set(costs["synthetic"].cuts) == set(costs["local"].cuts) == set(range(1, 6))
    assert len(costs["replay"].layer_extra) == 6 and not costs["replay"].cuts
    replay, synthetic = costs["replay"], costs["synthetic"]
    assert min(replay.layer_extra) > 0  # stage 0 of [(0, 3), (3, 6)] runs layers 0-2 twice forward
    assert replay.stages([(0, 3), (3, 6)])[0] == pytest.approx(sum(replay.layers[:3]) + replay.first
                                                               + sum(replay.layer_extra[:3]))
    assert synthetic.stages([(0, 3), (3, 6)])[0] == pytest.approx(sum(synthetic.layers[:3]) + synthetic.first
                                                                  + synthetic.cuts[3])
    mixed = costs["local-delayed"]  # a head at the cut, a second backward pass and a stash
    assert set(mixed.cuts) == set(range(1, 6)) and min(mixed.layer_extra) > 0
    stashed = measure_costs(net, x, y, rule="delayed", repeats=1)  # copying the weights into a stash
    assert len(stashed.layer_extra) == 6 and min(stashed.layer_extra) > 0 and not stashed.cuts


@pytest.mark.parametrize("script", ["run_standard_sg", "testParallelNet", "distSg", "distMulti"])
def test_an_unknown_rule_exits_2_with_one_line(tmp_path, script):
    code, err = refused(script, "--rule", "nope", "--results-dir", tmp_path)
    assert code == 2 and err.strip() == f"error: unknown RULE 'nope'; valid: {', '.join(RULES)}"


@pytest.mark.parametrize("rule", ["pipemare", "accumulated", "local-delayed", "synthetic"])
def test_a_rule_with_state_resumed_after_an_epoch_ends_as_the_uninterrupted_run(rule):
    """What a rule keeps between epochs (PipeMare's step count, drift and base rate; a
    head; a module's optimiser) travels in the stage's checkpoint."""
    data = digits(dtype=torch.float32)
    cfg = PipelineConfig(rule=rule, rule_options={"warmup": 3}, epochs=2, lr=3e-3)
    torch.manual_seed(0)
    whole = ComplexNet(network(dtype=torch.float32), 3)
    saved = {}
    start = copy.deepcopy(whole)
    train_serial(whole, data, cfg, on_epoch_end=lambda e, state: saved.update({e: copy.deepcopy(state())}))
    resumed = copy.deepcopy(start)
    train_serial(resumed, data, cfg, resume=saved[1])
    assert_same(resumed.net, whole.net, tol=0)
