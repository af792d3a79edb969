"""The fit loop: accuracy on the toy sets and DIGITS, divergence, determinism."""
import pytest
import torch

import datasets
from models import MODELS, build_model
from models.training import DivergenceError, evaluate, fit

torch.set_num_threads(1)


def train(arch, name, *, n_layers, h, epochs, lr, batch_size, width=None, conv=False, seed=0, schedule="constant"):
    data = datasets.load(name, seed=seed)
    torch.manual_seed(seed)
    model = build_model(arch, data.info.shape, data.info.classes, n_layers, h, width=width, conv=conv,
                        channels=4)
    fit(model, data.x_train, data.y_train, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, schedule=schedule)
    return model, evaluate(model, data.x_test, data.y_test)


@pytest.mark.parametrize("arch", list(MODELS))
def test_every_architecture_learns_the_ellipses(arch):
    _, acc = train(arch, "ELLIPSE", n_layers=8, h=0.5, epochs=60, lr=0.02, batch_size=50, width=4)
    assert acc >= 0.95


@pytest.mark.parametrize("arch", list(MODELS))
def test_every_architecture_learns_the_swiss_roll(arch):
    _, acc = train(arch, "SWISS", n_layers=10, h=0.5, epochs=150, lr=0.01, batch_size=50, width=8, schedule="halve:50")
    assert acc >= 0.95


@pytest.mark.parametrize("conv", [False, True], ids=["dense", "conv"])
@pytest.mark.parametrize("arch", list(MODELS))
def test_every_architecture_learns_digits(arch, conv):
    _, acc = train(arch, "DIGITS", n_layers=4, h=0.5, epochs=6 if conv else 10, lr=3e-3, batch_size=64, conv=conv)
    assert acc >= 0.9


def test_a_diverging_run_stops_with_a_message_naming_the_cause():
    data = datasets.load("ELLIPSE")
    model = build_model("leapfrog", (2,), 2, 6, 1e6, activation="relu")
    with pytest.raises(DivergenceError, match="epoch 1: the step size h=1000000.0 .*leapfrog.*learning rate"):
        fit(model, data.x_train, data.y_train, epochs=5, lr=0.01, batch_size=100)


def test_a_seed_makes_a_run_repeatable():
    def once():
        data = datasets.load("ELLIPSE", seed=1)
        torch.manual_seed(1)
        model = build_model("verlet", (2,), 2, 3, 0.5)
        hist = fit(model, data.x_train, data.y_train, epochs=2, lr=0.01, batch_size=64, seed=1,
                   optimizer="sgd", schedule="halve:1", alpha_f=1e-3, alpha_c=1e-3)
        return hist["loss"], [p.detach().clone() for p in model.parameters()]

    (l1, p1), (l2, p2) = once(), once()
    assert l1 == l2 and all(torch.equal(a, b) for a, b in zip(p1, p2))


def test_a_schedule_over_the_runs_steps_ends_with_the_run():
    from models.training import schedule_factor

    halvings, every_two = schedule_factor("halvings:5", 40, 4), schedule_factor("halve:2", 40, 4)
    assert [halvings(t) for t in range(41)] == [every_two(min(t, 39)) for t in range(41)]  # 10 epochs of 4 batches
    longer = schedule_factor("halvings:5", 400, 4)  # 100 epochs: still 5 halvings, the last at 80 % of the run
    assert longer(319) == 0.5 ** 3 and longer(320) == 0.5 ** 4 and longer(400) == 0.5 ** 4
    cosine = schedule_factor("cosine", 100, 10)
    assert cosine(0) == 1.0 and cosine(50) == pytest.approx(0.5) and cosine(100) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="halvings:H"):
        schedule_factor("halvings", 10, 1)
