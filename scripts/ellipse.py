"""Ellipses: train the four stable architectures on two concentric ellipse classes.

Prints a table of validation accuracy and training time, and saves a figure with the
data, each model's decision regions and a few points' trajectories through the layers.
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from harness.cli import configure  # noqa: E402
from harness.configs import ToyRun  # noqa: E402
from harness.entry import run  # noqa: E402
from harness.fit_experiments import train_toy  # noqa: E402

DATASET = "ELLIPSE"  # the toy set: ELLIPSE or SWISS
CONV = False  # toy sets are plain features: dense layers only
N = 10  # number of layers
STEP = 0.5  # step size h
GAMMA = 0.01  # diffusion gamma of the antisymmetric network
ACTIVATION = "tanh"  # tanh, relu or identity (a linear network)
WIDTH = 4  # dense state width, at least the input's features: smaller inputs are zero-padded to it
ELLIPSE_POINTS = 8000  # ELLIPSE: training points per class (enough to pin the boundary a = 1 down)
ELLIPSE_VALIDATION = 1000  # ELLIPSE: validation points per class
SWISS_POINTS = 2000  # SWISS: points per class, every other one for validation
LEARN_RATE = 0.01  # learning rate
OPTIMIZER = "adam"  # adam or sgd
LR_SCHEDULE = "halve:12"  # over the run's steps: halvings:H (H halvings at equal fractions), cosine, constant, halve:K
EPOCHS = 50  # training epochs per architecture
BATCH_SIZE = 50  # mini-batch size
REG_F = False  # smoothness regulariser across layers on/off
ALPHA_F = 1e-3  # its weight alpha_f
REG_C = False  # classifier weight decay on/off
ALPHA_C = 1e-3  # its weight alpha_c
SEED = 0  # random seed (data and initialisation)
DEVICE = "auto"  # auto (cuda if present), cpu, cuda, cuda:1, ...
DATA_ROOT = "data"  # where datasets are read and cached (unused by generated sets)
RESULTS_DIR = "results"  # run directories go under RESULTS_DIR/<script>/
CHECKPOINT_EVERY = 5  # save a checkpoint in the run directory every this many epochs (0: never)
RESUME = ""  # a run directory to continue, with its own constants (EPOCHS may grow)
VERBOSE = False  # print every epoch of every architecture


def main(argv=None):
    train_toy(configure(ToyRun, __file__, globals(), argv, __doc__))


if __name__ == "__main__":
    run(main)
