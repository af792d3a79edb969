"""The pipeline: each sub-network in its own process, its rule RULE deciding what gradient it applies.

Stage i receives activations and labels from stage i-1 and sends its output on at once.
With RULE = synthetic it steps on its module's synthetic gradient without waiting and
trains the module when the true gradient comes back (at most MAX_IN_FLIGHT batches
later); exact waits for the true gradient (backprop), delayed applies it MAX_IN_FLIGHT
batches late at the weights of its forward pass, replay at the current weights, local
trains on a small classifier of the stage's own.  torch.distributed: gloo on CPU, NCCL
when every stage has a GPU; started here or by torchrun --nproc-per-node M."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from harness import pipeline_experiments  # noqa: E402
from harness.cli import configure  # noqa: E402
from harness.configs import PipelineRun  # noqa: E402
from harness.entry import run  # noqa: E402

DATASET = "DIGITS"  # DIGITS, MNIST, FASHION, CIFAR10, ELLIPSE or SWISS
CHOICE = "verlet"  # architecture: r/resnet, a/antisymmetric, v/verlet, l/leapfrog
CONV = False  # 3x3 convolutional layers (image sets only)
M = 2  # number of sub-networks (M - 1 synthetic-gradient modules between them)
N = 4  # layers per sub-network on average: the network has M x N (BALANCE places the cuts)
STEP = 0.5  # step size h
LEARN_RATE = 3e-3  # learning rate of the sub-networks
EPOCHS = 10  # training epochs
GAMMA = 0.01  # diffusion gamma of the antisymmetric network
ACTIVATION = "tanh"  # tanh, relu or identity (a linear network)
WIDTH = 0  # dense state width, at least the input's features: smaller inputs are zero-padded to it
UNITS = "8,16,32"  # conv: channels of each unit, joined by 3x3 conv + 2x2 pooling (one value: a single block)
RULE = "synthetic"  # decoupling rule: exact, synthetic, delayed, replay or local (docs/DESIGN.md)
SG_MODULE = "linear"  # synthetic-gradient module: linear, mlp1 or mlp2 (hidden layers)
SG_LEARN_RATE = 1e-3  # learning rate of the modules (Adam)
MAX_IN_FLIGHT = 0  # batches a stage runs ahead of its true gradients (the delay k); 0: M - 1 - i at stage i
SHRINK = 1.0  # delayed, replay: factor of the late gradient (FDG's shrinking; 1: none)
EXACT_EPOCHS = 0  # the last EXACT_EPOCHS of EPOCHS use the exact rule (a hybrid finish)
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
    pipeline_experiments.distributed(configure(PipelineRun, __file__, globals(), argv, __doc__))


if __name__ == "__main__":
    run(main)
