"""Multi-unit convolutional networks: the forward pass by hand, cuts, prolongation, trainers."""

import pytest
import torch
import torch.nn.functional as F

import datasets
from datasets.augment import crop_flip
from models import MODELS, MultiUnitNet, build_model
from models.stability import perturbation_growth
from pvd import PVD, PVDConfig
from synthetic import ComplexNet
from tests.helpers import assert_true_gradients_equal_backprop, refused

torch.set_num_threads(1)
ARCHS = list(MODELS)


def tiny(arch, layers=5, units=(2, 3, 4), h=0.3, shape=(1, 8, 8)):
    torch.manual_seed(0)
    net = build_model(arch, shape, 3, layers, h, conv=True, units=units, gamma=0.1).double()
    with torch.no_grad():  # non-zero biases, so that a misplaced one shows
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net


def by_hand(net, x):
    """The network evaluated from its parameters alone, as the module doc writes it."""
    arch, h, s = net.name, net.h, torch.tanh
    conv = lambda Y, K: F.conv2d(Y, K, padding=1)  # noqa: E731
    conv_t = lambda Y, K: F.conv_transpose2d(Y, K, padding=1)  # noqa: E731
    Y = F.conv2d(x, net.lift.weight, net.lift.bias, padding=1)
    for u, unit in enumerate(net.units):
        if u > 0:
            c = net.connectives[u - 1].conv
            Y = F.avg_pool2d(s(F.conv2d(Y, c.weight, c.bias, padding=1)), 2)
        Z, Y_prev = torch.zeros_like(Y), Y  # every unit starts at rest
        for K, b in zip(unit.K, unit.b):
            b = b.view(1, -1, 1, 1)
            if arch == "resnet":
                Y = Y + h * s(conv(Y, K) + b)
            elif arch == "antisymmetric":
                Y = Y + h * s(0.5 * (conv(Y, K) - conv_t(Y, K)) - 0.5 * unit.gamma * Y + b)
            elif arch == "verlet":
                Z = Z - h * s(conv_t(Y, K) + b)
                Y = Y + h * s(conv(Z, K) + b)
            else:
                Y, Y_prev = 2 * Y - Y_prev + h ** 2 * s(-conv_t(conv(Y, K), K) + b), Y
    return net.classifier(Y.flatten(1))


@pytest.mark.parametrize("arch", ARCHS)
def test_the_forward_pass_equals_a_hand_written_evaluation(arch):
    net = tiny(arch)
    assert isinstance(net, MultiUnitNet) and [u.n_layers for u in net.units] == [2, 2, 1]
    assert [u.state_shape for u in net.units] == [(2, 8, 8), (3, 4, 4), (4, 2, 2)]
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(net(x), by_hand(net, x))


@pytest.mark.parametrize("arch", ARCHS)
def test_sub_ranges_cut_inside_a_unit_and_at_a_connective_layer_equal_the_whole(arch):
    net = tiny(arch)
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    whole = net.integrate(net.initial_state(x))
    state = net.initial_state(x)
    for a, b in [(0, 1), (1, 2), (2, 4), (4, 5)]:  # 1: inside unit 1; 2 and 4: connective layers
        state = net.integrate(state, a, b)
        assert state[0].shape[1:] == net.state_shape_at(b)
        assert len(state) == (2 if arch in ("verlet", "leapfrog") else 1)
    for s, w in zip(state, whole):
        torch.testing.assert_close(s, w)
    assert net.state_shape_at(2) == (2, 8, 8) and net.state_shape_at(3) == (3, 4, 4)


def test_every_parameter_but_the_lift_and_classifier_belongs_to_one_layer():
    net = tiny("verlet")
    by_layer = [set(map(id, net.layer_parameters(j, j + 1))) for j in range(net.n_layers)]
    assert set().union(*by_layer) == {id(p) for n, p in net.named_parameters() if net.layer_of(n) is not None}
    for n, p in net.named_parameters():
        j = net.layer_of(n)
        assert (j is None) == n.startswith(("lift", "classifier"))
        assert j is None or id(p) in by_layer[j]
    assert net.layer_of("connectives.0.conv.weight") == 2 == net.layer_of("units.1.K.0")


@pytest.mark.parametrize("arch", ARCHS)
def test_prolonging_a_multi_unit_network_keeps_the_output_close(arch):
    """The prolonged network integrates the same equations with half the step: it stays
    within O(h) of the coarse one (at the output, and at a cut: coarse layer 3 is fine
    layer 6), and closer as h shrinks."""
    x = torch.randn(8, 1, 8, 8, dtype=torch.float64)
    errors = []
    for h in (0.1, 0.02):
        net = tiny(arch, layers=6, h=h)
        fine = net.prolong(breaks=[3])
        assert [u.n_layers for u in fine.units] == [4, 4, 4] and fine.h == pytest.approx(h / 2)
        with torch.no_grad():
            c, f = net.integrate(net.initial_state(x), 0, 3), fine.integrate(fine.initial_state(x), 0, 6)
            errors.append([(fine(x) - net(x)).norm() / net(x).norm(), (f[0] - c[0]).norm() / c[0].norm()])
        assert max(errors[-1]) < 0.4 * h, (h, errors[-1])
    assert max(errors[1]) < max(errors[0]) / 3  # first order at least: 5 times the step, 3 times the error


@pytest.mark.parametrize("arch", ["resnet", "verlet", "leapfrog"])
def test_true_gradients_through_cuts_between_units_equal_backprop(arch):
    data = datasets.load("DIGITS")
    torch.manual_seed(0)
    net = build_model(arch, (1, 8, 8), 10, 6, 0.3, conv=True, units=(2, 3, 4))
    cnet = ComplexNet(net, 3)  # cuts at 2 and 4: both connective layers
    assert cnet.bounds == [(0, 2), (2, 4), (4, 6)]
    assert [m.state_shape for m in cnet.sg] == [(2, 8, 8), (3, 4, 4)]
    assert_true_gradients_equal_backprop(cnet, data)


def test_pvd_blocks_of_a_multi_unit_network_cover_it():
    data = datasets.load("DIGITS")
    torch.manual_seed(0)
    net = build_model("resnet", (1, 8, 8), 10, 6, 0.3, conv=True, units=(2, 3, 4))
    pvd = PVD(net, data, PVDConfig(num_proc=3, iterations=1, steps=2))
    groups = {n: g for n, g in pvd.group.items()}
    assert groups["units.1.K.0"] == groups["connectives.0.conv.bias"] == 1  # block 1 starts at the connective
    assert groups["lift.weight"] == 0 and groups["classifier.weight"] == 3


def test_the_stability_measures_apply_to_each_unit():
    net = tiny("verlet", layers=6).double()
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    pairs = net.stage_inputs(x)
    assert [Y.shape[1:] for _, Y in pairs] == [u.state_shape for u in net.units]
    with torch.no_grad():
        last, Y = pairs[-1]
        torch.testing.assert_close(net.classify(last.integrate(last.init_state(Y))), net(x))
        for unit, Y in pairs:
            growth = perturbation_growth(unit, Y, eps=1e-6)
            assert growth.shape == (unit.n_layers + 1, 4)
            torch.testing.assert_close(growth[0], torch.ones(4, dtype=torch.float64))


def test_crops_and_flips_are_windows_of_the_padded_images():
    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).view(2, 3, 5, 6)
    assert torch.equal(crop_flip(x, torch.Generator().manual_seed(0), pad=0, flip=False), x)
    out = crop_flip(x, torch.Generator().manual_seed(1), pad=2)
    gen = torch.Generator().manual_seed(1)  # the same draws, by hand
    shifts = torch.randint(0, 5, (2, 2), generator=gen)
    mirrored = torch.rand(2, generator=gen) < 0.5
    padded = F.pad(x, (2, 2, 2, 2))
    for i in range(2):
        r, c = shifts[:, i].tolist()
        window = padded[i, :, r:r + 5, c:c + 6]
        torch.testing.assert_close(out[i], window.flip(2) if mirrored[i] else window)


@pytest.mark.parametrize("units,message", [
    ("16,x", "UNITS must be channel counts separated by commas, such as 16,32,64; got '16,x'"),
    ("0,4", "UNITS must be channel counts"),
    ("2,3,4,5,6", "5 units pool the 8x8 images 4 times, too many"),
    ("2,3,4,5,6,7,8,9", "UNITS has 8 units but the network has 6 layers"),
])
def test_bad_units_exit_2_with_one_line(tmp_path, units, message):
    code, err = refused("resTest", "--dataset", "DIGITS", "--conv", 1, "--n", 6, "--units", units,
                        "--results-dir", tmp_path)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_augment_on_plain_features_exits_2(tmp_path):
    code, err = refused("PVD", "--dataset", "ELLIPSE", "--augment", 1, "--results-dir", tmp_path)
    assert code == 2 and err.strip() == "error: AUGMENT crops and flips images; ELLIPSE has none"
