"""Parallel Variable Distribution: train a stable network with P processors.

Each processor owns a block of consecutive layers; per iteration every one trains its
block while the others move along the shared gradient direction (forget-me-not
scalars), then the candidates are synchronised.  PARALLEL=1 runs P real processes
(torch.distributed, gloo on CPU / NCCL on GPUs, or under torchrun); PARALLEL=0 runs
the same algorithm in one process and reports its theoretical parallel time (per iteration
the slowest processor plus the synchronisation).
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from harness.cli import configure  # noqa: E402
from harness.configs import PVDRun  # noqa: E402
from harness.entry import run  # noqa: E402
from harness.pvd_experiments import train_pvd  # noqa: E402

DATASET = "ELLIPSE"  # ELLIPSE, SWISS, DIGITS, MNIST, FASHION (or CIFAR10)
CHOICE = "verlet"  # architecture: r/resnet, a/antisymmetric, v/verlet, l/leapfrog
CONV = False  # 3x3 convolutional layers (image sets only)
N = 8  # number of layers (split into NUM_PROC blocks)
STEP = 0.5  # step size h
GAMMA = 0.01  # diffusion gamma of the antisymmetric network
ACTIVATION = "tanh"  # tanh, relu or identity (a linear network)
WIDTH = 4  # dense state width, at least the input's features: smaller inputs are zero-padded to it
UNITS = "8,16,32"  # conv: channels of each unit, joined by 3x3 conv + 2x2 pooling (one value: a single block)
NUM_PROC = 2  # P: processors, one block of layers each
PARALLEL = True  # 1: P real processes; 0: the serial mode (theoretical parallel time)
ITERATIONS = 30  # maximum number of PVD iterations
EPOCHS = 1  # epochs of each processor's parallel phase per iteration
STEPS = 0  # if > 0, at most this many optimiser steps per parallel phase
TARGET_ACC = 0.99  # stop once the validation (test) accuracy reaches it
SYNC = "best"  # synchronisation: best (the best block's candidate) or affine (Ferris-Mangasarian)
DIRECTION_BATCHES = 0  # batches for the direction d = -grad (0: the whole training set)
SYNC_BATCHES = 0  # batches that score the candidates (0: the whole training set)
TRAIN_CLASSIFIER = True  # every processor trains the classifier (0: it moves along d)
LEARN_RATE = 0.01  # learning rate of the parallel phase
OPTIMIZER = "adam"  # adam or sgd
BATCH_SIZE = 50  # mini-batch size
AUGMENT = "auto"  # random crops (padding 4) and flips of the training batches: auto (CIFAR10 only), 1 or 0
THREADS = 0  # intra-op threads per process (0: the cores shared out; serial: all)
SEED = 0  # random seed
DEVICE = "auto"  # auto (cuda if present), cpu, cuda, cuda:1; ranks: gloo on CPU, NCCL with a GPU each
DATA_ROOT = "data"  # where datasets are read, downloaded and cached
RESULTS_DIR = "results"  # run directories go under RESULTS_DIR/<script>/
CHECKPOINT_EVERY = 1  # save a checkpoint in the run directory every this many iterations (0: never)
RESUME = ""  # a run directory to continue, with its own constants (ITERATIONS may grow)
MAX_RESTARTS = 0  # restarts of the whole group after a failure, from the latest checkpoint (0: fail fast)
FAIL_RANK = -1  # testing aid: this processor fails in iteration FAIL_ITERATION (-1: none)
FAIL_ITERATION = 1  # testing aid: ... in this iteration, in the first attempt only (a restart goes on)
FAIL_MODE = "raise"  # testing aid: raise an exception, or kill: the processor sends itself SIGKILL


def main(argv=None):
    train_pvd(configure(PVDRun, __file__, globals(), argv, __doc__))


if __name__ == "__main__":
    run(main)
