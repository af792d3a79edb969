"""The race: which way of training a stable network reaches a given accuracy first.

Every trainer of TRAINERS trains the same network (the same initial weights, data and
seed; the same batches where the trainer allows) and records test accuracy and training
loss against training wall-clock time, POINTS_PER_EPOCH points an epoch.  The points
are parameter copies taken with the clock stopped and evaluated after each trainer, so
neither evaluation nor process start-up counts.  Prints a table (time per epoch, final
accuracy, time to TARGET, speed-up over backprop on every core and over the best torch
peer) and saves race.png, race.json and TensorBoard series in the run directory.

Trainers: bp-1t and bp-all (backprop in one process, one thread / every core); ddp,
gpipe and 1f1b (torch, PROCESSES x THREADS); pipeline-<rule> (our pipeline, one stage a
process, rule exact, synthetic, delayed, replay or local); multilevel-<rule> (a coarse
network of N/2 layers in this process, prolonged, then the pipeline); pvd (PVD, one
block a process).
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from harness.cli import configure  # noqa: E402
from harness.configs import RaceRun  # noqa: E402
from harness.entry import run  # noqa: E402
from harness.race import race_main  # noqa: E402

DATASET = "FASHION"  # FASHION, MNIST, DIGITS, CIFAR10, ELLIPSE or SWISS
CHOICE = "verlet"  # architecture: r/resnet, a/antisymmetric, v/verlet, l/leapfrog
CONV = False  # 3x3 convolutional layers (image sets only)
N = 16  # number of layers
STEP = 0.5  # step size h
WIDTH = 784  # dense state width, at least the input's features
UNITS = "8,16,32"  # conv: channels of each unit, joined by 3x3 conv + 2x2 pooling
GAMMA = 0.01  # diffusion gamma of the antisymmetric network
ACTIVATION = "tanh"  # tanh, relu or identity (a linear network)
TRAIN_SAMPLES = 10000  # training images (0: the whole set), cut to a whole number of batches
BATCH_SIZE = 128  # mini-batch size (GPipe and 1F1B cut it into MICROBATCHES)
LEARN_RATE = 1e-3  # learning rate (Adam) of every trainer
SG_LEARN_RATE = 3e-4  # synthetic rule: learning rate of the modules
EPOCHS = 5  # training epochs of every trainer
POINTS_PER_EPOCH = 2  # points of each curve an epoch
TRAINERS = "bp-1t,bp-all,ddp,gpipe,1f1b,pipeline-exact,pipeline-synthetic,pipeline-delayed,pipeline-replay,pipeline-local,multilevel-local,pvd"  # trainers, comma-separated
TARGET = "bp-0.5"  # test accuracy to reach: a value such as 0.85, or bp-X: X points below backprop's final one
SEEDS = "0"  # seeds, comma-separated (several give the spread)
PROCESSES = 2  # processes of the multi-process trainers
THREADS = 0  # intra-op threads of each of those processes (0: the cores shared out)
MICROBATCHES = 4  # GPipe and 1F1B: micro-batches per batch
MAX_IN_FLIGHT = 0  # batches a stage runs ahead of its true gradients (the delay k); 0: M - 1 - i at stage i
COARSE_EPOCHS = 1  # multilevel: epochs of the coarse network, of EPOCHS
DEVICE = "auto"  # every trainer: auto (cuda if present), cpu, cuda, cuda:1; ranks as in distSg.py
DATA_ROOT = "data"  # where datasets are read, downloaded and cached
RESULTS_DIR = "results"  # run directories go under RESULTS_DIR/<script>/


def main(argv=None):
    race_main(configure(RaceRun, __file__, globals(), argv, __doc__))


if __name__ == "__main__":
    run(main)
