"""The architectures against hand-written evaluations of their equations."""
import pytest
import torch

from models import MODELS, build_model
from tests.helpers import operator_matrix

ARCHS = list(MODELS)


pytestmark = pytest.mark.usefixtures("float64")


def tiny(arch, conv, n_layers=3, h=0.3, **kw):
    torch.manual_seed(0)
    shape = (2, 4, 4) if conv else (5,)
    model = build_model(arch, shape, 3, n_layers, h, conv=conv, channels=3, gamma=0.1, **kw)
    with torch.no_grad():
        for b in model.b:
            b.normal_()
    x = torch.randn(4, *shape)
    return model, x


def hand_forward(model, x):
    """Evaluate the paper's equations with explicit matrices on flattened states."""
    sig = torch.tanh
    h = model.h
    Y = model.lift_input(x).detach().flatten(1).t()  # columns are samples
    if model.conv:
        mats = [operator_matrix(lambda v, K=K: torch.nn.functional.conv2d(v, K, padding=1), model.state_shape)
                for K in model.K]
        hw = model.state_shape[1] * model.state_shape[2]
        biases = [b.detach().repeat_interleave(hw)[:, None] for b in model.b]
    else:
        mats = [K.detach() for K in model.K]
        biases = [b.detach()[:, None] for b in model.b]
    eye = torch.eye(Y.shape[0])
    if model.name == "verlet":
        Z = torch.zeros_like(Y)
        for K, b in zip(mats, biases):
            Z = Z - h * sig(K.t() @ Y + b)
            Y = Y + h * sig(K @ Z + b)
    elif model.name == "leapfrog":
        Y_prev = Y
        for K, b in zip(mats, biases):
            Y, Y_prev = 2 * Y - Y_prev + h ** 2 * sig(-K.t() @ K @ Y + b), Y
    else:
        for K, b in zip(mats, biases):
            A = 0.5 * (K - K.t() - model.gamma * eye) if model.name == "antisymmetric" else K
            Y = Y + h * sig(A @ Y + b)
    return model.classifier(Y.t())


@pytest.mark.parametrize("conv", [False, True], ids=["dense", "conv"])
@pytest.mark.parametrize("arch", ARCHS)
def test_forward_matches_equation(arch, conv):
    model, x = tiny(arch, conv)
    with torch.no_grad():
        torch.testing.assert_close(model(x), hand_forward(model, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("conv", [False, True], ids=["dense", "conv"])
def test_antisymmetric_eigenvalues_have_real_part_minus_gamma_half(conv):
    model, _ = tiny("antisymmetric", conv)
    A = model.operator(0).detach()
    if conv:
        A = operator_matrix(lambda v: torch.nn.functional.conv2d(v, A, padding=1), model.state_shape)
    eig = torch.linalg.eigvals(A)
    torch.testing.assert_close(eig.real, torch.full_like(eig.real, -model.gamma / 2), rtol=0, atol=1e-10)
    assert eig.imag.abs().max() > 0.1  # not trivially diagonal


@pytest.mark.parametrize("conv", [False, True], ids=["dense", "conv"])
@pytest.mark.parametrize("arch", ["verlet", "leapfrog"])
def test_reversible_networks_recover_their_input(arch, conv):
    model, x = tiny(arch, conv, n_layers=8, h=0.5)
    with torch.no_grad():
        start = model.initial_state(x)
        back = model.reverse(model.integrate(start))
    for a, b in zip(back, start):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("conv", [False, True], ids=["dense", "conv"])
@pytest.mark.parametrize("arch", ARCHS)
def test_sub_ranges_compose_to_the_whole(arch, conv):
    model, x = tiny(arch, conv, n_layers=5)
    with torch.no_grad():
        whole = model.integrate(model.initial_state(x))
        part = model.integrate(model.initial_state(x), 0, 2)
        part = model.integrate(part, 2, 4)
        part = model.integrate(part, 4, 5)
    for a, b in zip(whole, part):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _smooth_net(arch, n_layers, conv=False):
    """A network whose weights sample smooth functions of t = j h on [0, 1]."""
    torch.manual_seed(1)
    shape = (1, 4, 4) if conv else (4,)
    model = build_model(arch, shape, 3, n_layers, 1.0 / n_layers, conv=conv, channels=2, gamma=0.1)
    A, B = torch.randn_like(model.K[0]), torch.randn_like(model.K[0])
    a, c = torch.randn_like(model.b[0]), torch.randn_like(model.b[0])
    with torch.no_grad():
        for j in range(n_layers):
            t = j / n_layers
            model.K[j].copy_(A + t * B)
            model.b[j].copy_(a * t + c * (1 - t))
    return model, torch.randn(16, *shape)


@pytest.mark.parametrize("method", ["interpolate", "copy"])
@pytest.mark.parametrize("arch", ARCHS)
def test_prolongation_stays_close_and_closer_as_h_shrinks(arch, method):
    errors = []
    for n in (4, 8, 16):
        coarse, x = _smooth_net(arch, n)
        fine = coarse.prolong(method)
        assert fine.n_layers == 2 * n and fine.h == pytest.approx(coarse.h / 2)
        with torch.no_grad():
            yc = coarse.integrate(coarse.initial_state(x))[0]
            yf = fine.integrate(fine.initial_state(x))[0]
        errors.append(((yf - yc).norm() / yc.norm()).item())
    assert errors[0] < 0.1, errors
    assert errors[2] < errors[1] < errors[0], errors


def test_prolongation_keeps_conv_output_close():
    coarse, x = _smooth_net("verlet", 16, conv=True)
    fine = coarse.prolong()
    with torch.no_grad():
        rel = (fine(x) - coarse(x)).norm() / coarse(x).norm()
    assert rel < 0.05


def test_prolongation_interpolates_linearly_and_respects_breaks():
    model, _ = tiny("resnet", False, n_layers=4)
    fine = model.prolong("interpolate", breaks=(2,))
    K = [k.detach() for k in model.K]
    torch.testing.assert_close(fine.K[0].detach(), K[0])
    torch.testing.assert_close(fine.K[1].detach(), 0.5 * (K[0] + K[1]))
    torch.testing.assert_close(fine.K[3].detach(), K[1])  # no interpolation across the break at 2
    torch.testing.assert_close(fine.K[7].detach(), K[3])
    copied = model.prolong("copy")
    torch.testing.assert_close(copied.K[5].detach(), K[2])


def test_regularisers_match_their_formulas():
    model, _ = tiny("resnet", False, n_layers=3, h=0.25)
    K, b = [k.detach() for k in model.K], [v.detach() for v in model.b]
    smooth = sum(((K[j + 1] - K[j]) ** 2).sum() + ((b[j + 1] - b[j]) ** 2).sum() for j in range(2))
    expected = 0.3 / (2 * 0.25) * smooth + 0.7 * (model.classifier.weight.detach() ** 2).sum()
    torch.testing.assert_close(model.regularization(0.3, 0.7).detach(), expected)
    assert model.regularization().item() == 0.0


def test_bad_model_arguments_raise():
    with pytest.raises(ValueError, match="valid"):
        build_model("x", (4,), 2, 3, 0.1)
    with pytest.raises(ValueError, match="n_layers"):
        build_model("r", (4,), 2, 0, 0.1)
    with pytest.raises(ValueError, match="step size"):
        build_model("v", (4,), 2, 3, 0.0)
    with pytest.raises(ValueError, match="image"):
        build_model("v", (4,), 2, 3, 0.1, conv=True)
