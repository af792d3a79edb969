"""Distributed multilevel: the coarse stage of testParallelNet, then distributed fine training.

The coarse complex network trains serially with true gradients while its modules
learn; it is prolonged, and the fine network trains as in distSg.py, one sub-network
per process."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from harness import pipeline_experiments  # noqa: E402
from harness.cli import configure  # noqa: E402
from harness.configs import MultilevelRun  # noqa: E402
from harness.entry import run  # noqa: E402

DATASET = "DIGITS"  # DIGITS, MNIST, FASHION, CIFAR10, ELLIPSE or SWISS
CHOICE = "verlet"  # architecture: r/resnet, a/antisymmetric, v/verlet, l/leapfrog
CONV = False  # 3x3 convolutional layers (image sets only)
M = 2  # number of sub-networks (M - 1 synthetic-gradient modules between them)
N = 2  # coarse layers per sub-network on average: M x N coarse, M x 2N fine (BALANCE places the cuts)
STEP_C = 1.0  # coarse step size h
LEARN_RATE_C = 3e-3  # coarse learning rate
EPOCHS_C = 5  # coarse epochs (true gradients through the cuts, modules learning)
STEP_F = 0.5  # fine step size (STEP_C / 2 keeps the prolonged function)
LEARN_RATE_F = 1e-3  # fine learning rate
EPOCHS_F = 5  # fine epochs (the rule RULE)
PROLONG = "interpolate"  # new layer weights: interpolate (Meganet) or copy (Chang et al.)
GAMMA = 0.01  # diffusion gamma of the antisymmetric network
ACTIVATION = "tanh"  # tanh, relu or identity (a linear network)
WIDTH = 0  # dense state width, at least the input's features: smaller inputs are zero-padded to it
UNITS = "8,16,32"  # conv: channels of each unit, joined by 3x3 conv + 2x2 pooling (one value: a single block)
RULE = "synthetic"  # decoupling rule: exact, synthetic, delayed, replay or local (docs/DESIGN.md)
SG_MODULE = "linear"  # synthetic-gradient module: linear, mlp1 or mlp2 (hidden layers)
SG_LEARN_RATE = 1e-3  # learning rate of the modules (Adam)
MAX_IN_FLIGHT = 0  # batches a stage runs ahead of its true gradients (the delay k); 0: M - 1 - i at stage i
SHRINK = 1.0  # delayed, replay: factor of the late gradient (FDG's shrinking; 1: none)
EXACT_EPOCHS = 0  # the last EXACT_EPOCHS of EPOCHS_F use the exact rule (a hybrid finish)
OPTIMIZER = "adam"  # optimiser of the sub-networks: adam or sgd
BATCH_SIZE = 64  # mini-batch size
AUGMENT = "auto"  # random crops (padding 4) and flips of the training batches: auto (CIFAR10 only), 1 or 0
BALANCE = "cost"  # cuts: cost (stages of equal measured time per batch) or even (N layers per sub-network)
THREADS = 0  # intra-op threads per process (0: the cores shared out)
MAX_RESTARTS = 0  # restarts of the whole group after a failure, from the latest checkpoints (0: fail fast)
FAIL_STAGE = -1  # testing aid: this stage fails at the first batch of FAIL_EPOCH (-1: none)
FAIL_EPOCH = 1  # testing aid: ... in this epoch, in the first attempt only (a restart trains on)
FAIL_MODE = "raise"  # testing aid: raise an exception, or kill: the stage sends itself SIGKILL
SEED = 0  # random seed
DEVICE = "auto"  # auto (cuda if present), cpu, cuda, cuda:1; ranks: gloo on CPU, NCCL with a GPU each
DATA_ROOT = "data"  # where datasets are read, downloaded and cached
RESULTS_DIR = "results"  # run directories go under RESULTS_DIR/<script>/
CHECKPOINT_EVERY = 1  # save a checkpoint in the run directory every this many epochs (0: never)
RESUME = ""  # a run directory to continue, with its own constants (EPOCHS may grow)


def main(argv=None):
    pipeline_experiments.distributed_multilevel(configure(MultilevelRun, __file__, globals(), argv, __doc__))


if __name__ == "__main__":
    run(main)
