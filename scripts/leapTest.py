"""Train the second-order (leapfrog) network on one dataset (MNIST by default), dense or convolutional.

Prints a progress line per epoch, saves metrics, curves and the weights in the run
directory, and ends with a RESULT line.
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from harness.cli import configure  # noqa: E402
from harness.configs import ArchitectureRun  # noqa: E402
from harness.entry import run  # noqa: E402
from harness.fit_experiments import train_single  # noqa: E402

DATASET = "MNIST"  # MNIST, FASHION, CIFAR10, DIGITS, ELLIPSE or SWISS
TRAIN_SAMPLES = 0  # the first TRAIN_SAMPLES training images (0: all); the test set whole
CHOICE = "leapfrog"  # architecture: r/resnet, a/antisymmetric, v/verlet, l/leapfrog
CONV = False  # 3x3 convolutional layers instead of dense ones (image sets only)
N = 6  # number of layers (conv: shared out among the UNITS, 2 + 2 + 2 for 6 in 3 units)
STEP = 0.5  # step size h
GAMMA = 0.01  # diffusion gamma of the antisymmetric network
ACTIVATION = "tanh"  # tanh, relu or identity (a linear network)
WIDTH = 0  # dense state width, at least the input's features: smaller inputs are zero-padded to it
UNITS = "8,16,32"  # conv: channels of each unit, joined by 3x3 conv + 2x2 pooling (one value: a single block)
LEARN_RATE = 3e-3  # learning rate
OPTIMIZER = "adam"  # adam or sgd
LR_SCHEDULE = "halvings:5"  # over the run's steps: halvings:H (H halvings at equal fractions), cosine, constant
EPOCHS = 10  # training epochs
BATCH_SIZE = 64  # mini-batch size
AUGMENT = "auto"  # random crops (padding 4) and flips of the training batches: auto (CIFAR10 only), 1 or 0
REG_F = False  # smoothness regulariser across layers on/off
ALPHA_F = 1e-3  # its weight alpha_f
REG_C = False  # classifier weight decay on/off
ALPHA_C = 1e-3  # its weight alpha_c
SEED = 0  # random seed (data split and initialisation)
DEVICE = "auto"  # auto (cuda if present), cpu, cuda, cuda:1, ...
DATA_ROOT = "data"  # where datasets are read, downloaded and cached
RESULTS_DIR = "results"  # run directories go under RESULTS_DIR/<script>/
CHECKPOINT_EVERY = 1  # save a checkpoint in the run directory every this many epochs (0: never)
RESUME = ""  # a run directory to continue, with its own constants (EPOCHS may grow)


def main(argv=None):
    train_single(configure(ArchitectureRun, __file__, globals(), argv, __doc__))


if __name__ == "__main__":
    run(main)
