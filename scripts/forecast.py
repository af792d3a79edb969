"""Each trainer's seconds per epoch on M devices, forecast from a profile taken here.

Times every layer's forward and backward pass and optimiser step on DEVICE at each batch
size a trainer runs, each rule's extra work, what GPipe and 1F1B pay for micro-batches
(backward passes into held gradients, the gradients' scaling), the messages' sizes, the
link (LINK: a named preset, "GBPS,LATENCY_US", or "measured" over this machine's
transport) and each schedule's own work an operation (SCHEDULE_OVERHEAD), then
simulates each trainer of TRAINERS on each count of DEVICES (harness/simulate.py: one
device does one thing at a time, messages on their own links) and prints seconds per
epoch, busy fraction and memory per device.  Every figure it gives is a forecast.
Writes forecast.json and, per trainer, a Chrome trace (Perfetto) of a few simulated
batches on the largest DEVICES.  EPOCHS > 0 runs the forecast race: each trainer's
test accuracy after each epoch, trained here exactly as it computes on M devices (the
pipeline's rules at M stages), against the forecast seconds of those epochs
(forecast_race.png, one panel per M; the forecast time to the target).  VALIDATE = 1
measures every trainer on 1 and 2 processes here (three rounds over every workload,
the row the median of a trainer's three runs; each run forecast at the machine's speed
timed just before and after it, and at the sharing of the cores and each schedule's
own work measured before its round), and a sleep workload on 4, 8 and 16, against its
forecast (about 21 minutes on 2 cores: 19 the real work, 2 the sleep workload).

Trainers: bp-1t, bp-all (backprop, one device), ddp, gpipe, 1f1b (torch), and
pipeline-<rule> (our pipeline, one stage a device, each stage at the delay that keeps
every device busy; MAX_IN_FLIGHT overrides it).
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from harness.cli import configure  # noqa: E402
from harness.configs import ForecastRun  # noqa: E402
from harness.entry import run  # noqa: E402
from harness.forecast import forecast_main  # noqa: E402

DATASET = "FASHION"  # FASHION, MNIST, DIGITS, CIFAR10, ELLIPSE or SWISS
CHOICE = "verlet"  # architecture: r/resnet, a/antisymmetric, v/verlet, l/leapfrog
CONV = False  # 3x3 convolutional layers (image sets only)
N = 16  # number of layers
WIDTH = 784  # dense state width, at least the input's features
UNITS = "8,16,32"  # conv: channels of each unit, joined by 3x3 conv + 2x2 pooling
TRAIN_SAMPLES = 0  # training images of an epoch (0: the whole set)
BATCH_SIZE = 128  # mini-batch size (GPipe and 1F1B cut it into MICROBATCHES, DDP shares it among the devices)
TRAINERS = "bp-all,ddp,gpipe,1f1b,pipeline-exact,pipeline-delayed,pipeline-local"  # trainers, comma-separated
DEVICES = "1,2,4,8,16"  # device counts M, comma-separated
LINK = "nvlink4"  # measured, nvlink4, pcie4, ib100, 10gbe, free, or GBPS,LATENCY_US
OTHER_LINK = "10gbe"  # a second link forecast from the same profile, side by side ("": none)
MICROBATCHES = 4  # GPipe and 1F1B: micro-batches per batch
MAX_IN_FLIGHT = 0  # the pipeline's delay k at every stage; 0: M - 1 - i at stage i (every device busy)
VALIDATE = False  # also measure every trainer on 1 and 2 processes here against its forecast
VALIDATE_SAMPLES = 1024  # training images of each of a validation run's 2 epochs (the second is timed)
VALIDATE_PARTS = "real,sleep"  # real: every trainer on 1 and 2 processes; sleep: the sleep workload on 4, 8, 16
VALIDATE_RUNS = 3  # real: rounds of every trainer on every workload, each row the median run (a round: ~5.5 min)
REPEATS = 5  # rounds of the profile's timings (medians)
SCHEDULE_OVERHEAD = True  # add each schedule's own work an operation, measured on 2 idle processes (a few seconds)
VARY = True  # each device's work a batch drawn from the profile's step-to-step variation (False: mean durations)
EPOCHS = 0  # > 0: the forecast race, each trainer's accuracy per epoch (trained here) against forecast time
LEARN_RATE = 1e-3  # the forecast race: learning rate (Adam) of every trainer
SG_LEARN_RATE = 3e-4  # the forecast race, synthetic rule: learning rate of the modules
TARGET_POINTS = 0.5  # the forecast race's target: backprop's final test accuracy less this many points
DEVICE = "auto"  # where the profile is taken: auto (cuda if present), cpu, cuda, cuda:1
DATA_ROOT = "data"  # where datasets are read, downloaded and cached
RESULTS_DIR = "results"  # run directories go under RESULTS_DIR/<script>/


def main(argv=None):
    forecast_main(configure(ForecastRun, __file__, globals(), argv, __doc__))


if __name__ == "__main__":
    run(main)
