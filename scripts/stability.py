"""Stability diagnostics of the four architectures (Haber & Ruthotto 2017), as figures.

phase_plane.png: 2-D points through PHASE_LAYERS identical layers (forward Euler, Verlet,
leapfrog) for K with eigenvalues (2, 2), (-2, -2) and the antisymmetric K (eigenvalues +-i).
perturbation_growth.png: ||Y_j(x + delta) - Y_j(x)|| / ||delta|| and the largest singular
value of dY_j/dY_0 through the layers, at initialisation and after training, for each depth
N with h = FINAL_TIME / N.  spectra.png: eigenvalues of every layer's step-map Jacobian at
the data, with the unit circle.  depth.png: accuracy, training loss and time against N.
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from harness.cli import configure  # noqa: E402
from harness.configs import StabilityRun  # noqa: E402
from harness.entry import run  # noqa: E402
from harness.stability_experiments import stability_main  # noqa: E402

DATASET = "DIGITS"  # ELLIPSE, SWISS, DIGITS, MNIST, FASHION or CIFAR10 (dense networks)
DEPTHS = "4,8,16,32,64"  # depths N of the sweep, comma-separated; h = FINAL_TIME / N
FINAL_TIME = 4.0  # T = N h, the same for every depth
EPOCHS = 8  # training epochs at every depth
LEARN_RATE = 3e-3  # learning rate
OPTIMIZER = "adam"  # adam or sgd
LR_SCHEDULE = "constant"  # over the run's steps: halvings:H (H halvings at equal fractions), cosine, constant, halve:K
BATCH_SIZE = 64  # mini-batch size
GAMMA = 0.01  # diffusion gamma of the antisymmetric network
ACTIVATION = "tanh"  # tanh, relu or identity (a linear network)
WIDTH = 0  # dense state width, at least the input's features: smaller inputs are zero-padded to it
SAMPLES = 32  # test samples on which growth and singular values are measured
POWER_ITERATIONS = 20  # power-iteration steps for the largest singular value of dY_j/dY_0
SINGULAR_POINTS = 5  # layers j (evenly spaced in 0..N) at which that singular value is computed
SPECTRA_DEPTH = 16  # the depth whose step-map eigenvalues spectra.png shows (one of DEPTHS)
SPECTRA_SAMPLES = 8  # test samples at which the step-map Jacobians are taken
PHASE_STEP = 0.1  # h of the phase-plane figure
PHASE_LAYERS = 10  # identical layers of the phase-plane figure
PHASE_GRID = 7  # phase plane: a PHASE_GRID x PHASE_GRID grid of starting points in [-1, 1]^2
SEED = 0  # random seed (data split, initialisation, perturbations)
DEVICE = "auto"  # auto (cuda if present), cpu, cuda, cuda:1, ...
DATA_ROOT = "data"  # where datasets are read, downloaded and cached
RESULTS_DIR = "results"  # run directories go under RESULTS_DIR/<script>/


def main(argv=None):
    stability_main(configure(StabilityRun, __file__, globals(), argv, __doc__))


if __name__ == "__main__":
    run(main)
