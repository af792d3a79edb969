"""A rule is one class: a toy rule defined here, registered, reaches the scripts' command
line, checks, profile and history, and trains serially and on two processes alike."""
import json

import pytest

from synthetic.rules import REGISTRY, Rule, option, positive, register, unregister
from tests.helpers import refused, run_main


class Scaled(Rule):
    """A toy rule: backprop whose stages apply ``scale`` times their true gradient,
    theta <- step(theta, scale (dh^t/dtheta)^T delta^t)."""

    name = "toy-scaled"
    receives_gradients = True
    kinds = ("toy scaling",)
    stats = ("toy_grad_norm",)

    scale: float = option(0.5, "toy: factor of the true gradient", positive)

    def after_forward(self, stage, b, inp, out, labels):
        grad = yield from stage.true_gradient(b)
        with stage.prof("toy scaling"):
            grad = tuple(self.scale * g for g in grad)
            stage.stats.add(toy_grad_norm=sum(g.norm() for g in grad))
        stage.backward(out, grad)
        stage.send_input_grad(b, inp)
        stage.step()


@pytest.fixture(autouse=True)
def registered():
    """The toy rule is a rule the scripts know while this module's tests run.  The stage
    processes need no registry: the rule itself travels to them (pickled by reference to
    this module)."""
    register(Scaled)
    yield
    unregister(Scaled.name)


ARGS = ("--rule", "toy-scaled", "--scale", 0.25, "--dataset", "DIGITS", "--epochs", 2)


def test_a_rule_needs_its_abstract_step_and_says_whether_it_receives_gradients():
    with pytest.raises(TypeError, match="receives true gradients"):
        @register
        class Silent(Scaled):  # inherits receives_gradients without saying it
            name = "toy-silent"
    class Unfinished(Rule):  # no after_forward
        name = "toy-unfinished"
        receives_gradients = True

    with pytest.raises(TypeError, match="abstract"):
        Unfinished()
    assert "toy-silent" not in REGISTRY


def test_a_registered_rule_is_trained_by_the_serial_script_with_its_option(tmp_path):
    res, _ = run_main("run_standard_sg", *ARGS, "--m", 3, "--results-dir", tmp_path)
    assert res["rule"] == "toy-scaled"
    (run_dir,) = (tmp_path / "run_standard_sg").iterdir()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["constants"]["SCALE"] == 0.25 and config["constants"]["RULE"] == "toy-scaled"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    norms = metrics["history"]["synthetic gradients"]["toy_grad_norm"]  # per epoch, one value per cut
    assert len(norms) == 2 and all(len(n) == 2 and min(n) > 0 for n in norms)
    assert all(p["kinds_s"]["toy scaling"] > 0 for p in metrics["profile"][:-1])  # its own kind, in the profile


def test_a_rule_option_out_of_range_is_refused_with_one_line():
    status, err = refused("run_standard_sg", "--rule", "toy-scaled", "--scale", 0)
    assert status == 2 and err.strip() == "error: SCALE must be > 0, got 0.0"
    status, err = refused("distSg", "--shrink", -1)
    assert status == 2 and err.strip() == "error: SHRINK must be > 0, got -1.0"


@pytest.mark.slow
def test_a_registered_rule_trains_alike_serially_and_on_two_processes(tmp_path):
    """The rule travels to the stage processes with its option (the processes import this
    module, which registers it) and gives the serial run's parameters."""
    serial, _ = run_main("run_standard_sg", *ARGS, "--m", 2, "--results-dir", tmp_path)
    res, _ = run_main("distSg", *ARGS, "--m", 2, "--balance", "even", "--results-dir", tmp_path)
    assert res["rule"] == "toy-scaled"
    assert (res["train_acc"], res["test_acc"]) == (serial["train_acc"], serial["test_acc"])
    (serial_dir,), (dist_dir,) = (tmp_path / "run_standard_sg").iterdir(), (tmp_path / "distSg").iterdir()
    a = json.loads((serial_dir / "metrics.json").read_text())["history"]["synthetic gradients"]
    b = json.loads((dist_dir / "metrics.json").read_text())["history"]["distributed"]
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    assert [n[0] for n in b["toy_grad_norm"]] == pytest.approx([n[0] for n in a["toy_grad_norm"]], rel=1e-5)


@pytest.mark.parametrize("rule", ["synthetic", "delayed", "replay"])
def test_the_default_delay_is_that_of_a_busy_pipeline_of_m_stages(rule):
    """MAX_IN_FLIGHT = 0: stage i of M runs M - 1 - i batches ahead of its true gradients."""
    import torch

    from models import build_model
    from synthetic import ComplexNet, PipelineConfig
    from synthetic.pipeline import make_stage
    from synthetic.profile import StageProfile
    from synthetic.transport import Loopback

    cnet = ComplexNet(build_model("verlet", (1, 8, 8), 10, 8, 0.5), 4)
    hub = Loopback()
    for options, delays in (({}, [3, 2, 1]), ({"max_in_flight": 2}, [2, 2, 2])):
        cfg = PipelineConfig(rule=rule, rule_options=options)
        stages = [make_stage(cnet, i, cfg, hub.endpoint(i), StageProfile(torch.device("cpu"))) for i in range(3)]
        assert [st.rule.k for st in stages] == delays
