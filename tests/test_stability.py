"""The stability measures against truth: exact Jacobians, hand-computable growth, Figure 1."""
import pytest
import torch

from models import MODELS, build_model
from models import stability as st
from tests.helpers import refused, result_of, run_script

ARCHS = list(MODELS)


pytestmark = pytest.mark.usefixtures("float64")


def tiny(arch, n_layers=5, h=0.3, width=6, activation="tanh"):
    torch.manual_seed(1)
    model = build_model(arch, (4,), 3, n_layers, h, width=width, activation=activation, gamma=0.1)
    with torch.no_grad():
        for b in model.b:
            b.normal_(std=0.5)
    return model, torch.randn(3, 4)


@pytest.mark.parametrize("arch", ["verlet", "leapfrog"])
def test_hamiltonian_and_leapfrog_steps_preserve_volume(arch):
    model, x = tiny(arch)
    for J in st.step_jacobians(model, x):
        assert J.shape == (3, 12, 12)
        torch.testing.assert_close(torch.linalg.det(J), torch.ones(3), atol=1e-10, rtol=0)


def test_forward_euler_steps_do_not_preserve_volume():
    model, x = tiny("resnet")
    dets = torch.stack([torch.linalg.det(J) for J in st.step_jacobians(model, x)])
    assert (dets - 1).abs().max() > 1e-3


def test_step_jacobian_equals_the_hand_derivative_of_forward_euler():
    model, x = tiny("resnet")
    (J,) = st.step_jacobians(model, x, layers=[2])
    Y = model.integrate(model.initial_state(x), 0, 2)[0].detach()
    K, b = model.K[2].detach(), model.b[2].detach()
    slope = 1 - torch.tanh(Y @ K.t() + b) ** 2  # tanh'
    exact = torch.eye(6) + model.h * slope[:, :, None] * K[None]
    torch.testing.assert_close(J, exact)


def test_growth_is_one_when_the_layers_do_nothing():
    model, x = tiny("resnet")
    with torch.no_grad():
        for K, b in zip(model.K, model.b):
            K.zero_()
            b.zero_()
    torch.testing.assert_close(st.perturbation_growth(model, x), torch.ones(6, 3))


def test_growth_of_a_linear_network_is_the_power_of_its_step_factor():
    model, x = tiny("resnet", activation="identity")
    a = -1.5
    with torch.no_grad():
        for K in model.K:
            K.copy_(a * torch.eye(6))
    growth = st.perturbation_growth(model, x, eps=1e-3)
    exact = abs(1 + model.h * a) ** torch.arange(6.0)
    torch.testing.assert_close(growth, exact[:, None].expand(6, 3), rtol=1e-9, atol=0)
    sigma = st.top_singular_values(model, x, [0, 2, 5], iterations=3)
    torch.testing.assert_close(sigma, exact[[0, 2, 5], None].expand(3, 3), rtol=1e-9, atol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_power_iteration_finds_the_largest_singular_value(arch):
    model, x = tiny(arch)
    sigma = st.top_singular_values(model, x, [0, 3, 5], iterations=200, generator=torch.Generator().manual_seed(0))
    for row, j in enumerate([0, 3, 5]):
        for i in range(len(x)):
            y0 = model.lift_input(x[i:i + 1]).detach()[0]
            J = torch.autograd.functional.jacobian(lambda y: model.features(y[None])[j][0], y0)
            exact = torch.linalg.svdvals(J)[0]
            torch.testing.assert_close(sigma[row, i], exact, rtol=1e-6, atol=0)


def test_phase_plane_diverges_collapses_and_preserves_as_figure_1():
    h, n = 0.1, 10
    points = st.grid_points(7)
    grow = st.phase_plane(st.PHASE_KS["eig (2, 2)"], points, h, n)["resnet"]["growth"]
    shrink = st.phase_plane(st.PHASE_KS["eig (-2, -2)"], points, h, n)["resnet"]["growth"]
    keep = st.phase_plane(st.PHASE_KS["antisymmetric, eig +-i"], points, h, n)["resnet"]["growth"]
    bound = (1 + h ** 2) ** (n / 2)
    assert grow > 1.5 and shrink < 0.5
    assert 1 < keep <= bound  # forward Euler on eigenvalues +-i: |1 +- ih| > 1, so a slight growth


def test_phase_plane_uses_the_schemes_own_steps():
    K = torch.tensor([[0.3, 1.0], [-0.7, 0.2]])
    points = st.grid_points(3)
    run = st.phase_plane(K, points, h=0.2, n_layers=2)
    Y, Z = points, torch.zeros_like(points)
    for _ in range(2):  # Verlet by hand
        Z = Z - 0.2 * torch.tanh(Y @ K)
        Y = Y + 0.2 * torch.tanh(Z @ K.t())
    torch.testing.assert_close(run["verlet"]["trajectory"][-1], Y)
    assert run["resnet"]["trajectory"].shape == (3, 9, 2)


@pytest.mark.slow
def test_stability_script_writes_its_four_figures(tmp_path):
    res = result_of(run_script("stability", "--depths", "2,4", "--epochs", 1, "--spectra-depth", 2,
                               "--samples", 8, "--power-iterations", 3, "--singular-points", 3,
                               "--phase-grid", 3, "--results-dir", tmp_path))
    assert set(res["results"]) == set(ARCHS)
    for r in res["results"].values():
        assert set(r["growth_init"]) == set(r["growth_trained"]) == set(r["accuracy_by_depth"]) == {"2", "4"}
    for arch in ("verlet", "leapfrog"):  # volume-preserving steps: the product of the |eigenvalues| is 1
        assert res["results"][arch]["max_abs_step_eigenvalue"] >= 1 - 1e-9
        assert res["results"][arch]["max_abs_step_eigenvalue_init"] >= 1 - 1e-9
    assert set(res["phase_plane"]) == set(st.PHASE_KS)
    assert res["train_time_s"] == pytest.approx(sum(t for r in res["results"].values()
                                                    for t in r["time_by_depth"].values()))
    (run_dir,) = (tmp_path / "stability").iterdir()
    for name in ("phase_plane", "perturbation_growth", "spectra", "depth"):
        assert (run_dir / f"{name}.png").stat().st_size > 10000


@pytest.mark.parametrize("args,message", [
    (["--depths", "4,x"], "DEPTHS must be comma-separated integers"),
    (["--depths", "0,4"], "DEPTHS must hold layer counts >= 1"),
    (["--spectra-depth", "5"], "SPECTRA_DEPTH 5 is not one of DEPTHS"),
    (["--final-time", "0"], "FINAL_TIME must be > 0"),
])
def test_stability_script_bad_values_exit_2(tmp_path, args, message):
    code, err = refused("stability", *args, "--results-dir", tmp_path)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_step_eigenvalues_of_linear_layers_match_their_closed_form():
    """Identity activation, zero biases: forward Euler with K = a I steps by (1 + h a) I; the
    antisymmetric layer with K = [[0, w], [0, 0]] uses 1/2 (K - K^T - gamma I), whose
    eigenvalues are (-gamma +- i w) / 2, so each step's are 1 + h (-gamma +- i w) / 2."""
    h, a, w, gamma = 0.3, -0.7, 2.0, 0.1
    x = torch.randn(3, 2)
    resnet = build_model("resnet", (2,), 2, 2, h, width=2, activation="identity")
    anti = build_model("antisymmetric", (2,), 2, 2, h, width=2, activation="identity", gamma=gamma)
    with torch.no_grad():
        for K, b in zip(resnet.K, resnet.b):
            K.copy_(a * torch.eye(2))
            b.zero_()
        for K, b in zip(anti.K, anti.b):
            K.copy_(torch.tensor([[0.0, w], [0.0, 0.0]]))
            b.zero_()
    eig = st.step_eigenvalues(resnet, x)
    torch.testing.assert_close(eig, torch.full((2, 3, 2), 1 + h * a, dtype=torch.complex128))
    eig = st.step_eigenvalues(anti, x)
    expected = torch.tensor([1 + h * (-gamma + 1j * w) / 2, 1 + h * (-gamma - 1j * w) / 2])
    for layer in eig:
        for sample in layer:
            torch.testing.assert_close(sorted(sample.tolist(), key=lambda z: z.imag), sorted(expected.tolist(),
                                       key=lambda z: z.imag))
