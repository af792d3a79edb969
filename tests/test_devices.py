"""Where the ranks compute and how they talk, and clocks that never block a pipeline: every
choice that a CPU machine can decide, with ``torch.cuda`` replaced by a fake GPU."""
import pytest
import torch

from harness import pipeline_experiments
from harness import race as racing
from harness.launch import DistContext, rank_device
from models import checkpoint
from models.devices import pick_device
from models.recording import Recorder
from synthetic.balance import Costs, balanced_bounds
from synthetic.profile import StageProfile
from tests.helpers import refused


class FakeCuda:
    """``gpus`` GPUs as torch.cuda reports them, the calls that wait for a GPU recorded in
    ``calls``, and CUDA events that complete when the test says so."""

    def __init__(self, monkeypatch, gpus):
        self.calls, self.events = [], []
        fake = self

        class Stream:
            def __init__(self, device):
                self.device = device

            def synchronize(self):
                fake.calls.append(("stream sync", str(self.device)))

        class Event:
            def __init__(self, enable_timing=False):
                assert enable_timing
                self.at, self.complete = None, False
                fake.events.append(self)

            def record(self, stream):
                self.at = len(fake.events)  # a tick per event: intervals of known length

            def query(self):
                return self.complete

            def synchronize(self):  # one stream: the events recorded before this one are done too
                fake.calls.append(("event wait", self.at))
                for e in fake.events:
                    e.complete = e.complete or e.at <= self.at

            def elapsed_time(self, end):
                assert self.complete and end.complete, "an event read before it completed"
                return 1000.0 * (end.at - self.at)  # milliseconds: one second a tick

        monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
        monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: fake.calls.append(("device-wide sync", a)))
        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream(device))
        monkeypatch.setattr(torch.cuda, "Event", Event)

    def complete_all(self):
        for e in self.events:
            e.complete = True


# ---- devices and backends ------------------------------------------------------------------

@pytest.mark.parametrize("gpus,request_,local_world,expected", [
    (0, "auto", 2, [("cpu", "gloo"), ("cpu", "gloo")]),
    (8, "cpu", 2, [("cpu", "gloo"), ("cpu", "gloo")]),  # --device cpu: gloo whatever GPUs are there
    (8, "auto", 2, [("cuda:0", "nccl"), ("cuda:1", "nccl")]),  # a GPU each
    (2, "cuda", 2, [("cuda:0", "nccl"), ("cuda:1", "nccl")]),
    (1, "cuda", 2, [("cuda:0", "gloo"), ("cuda:0", "gloo")]),  # one GPU shared over gloo
    (3, "auto", 4, [("cuda:0", "gloo"), ("cuda:1", "gloo"), ("cuda:2", "gloo"), ("cuda:0", "gloo")]),
    (2, "cuda:1", 2, [("cuda:1", "gloo"), ("cuda:1", "gloo")]),  # pinned: both ranks on GPU 1
    (2, "cuda:1", 1, [("cuda:1", "nccl")]),
])
def test_each_rank_gets_its_device_and_the_backend_that_fits(monkeypatch, gpus, request_, local_world, expected):
    FakeCuda(monkeypatch, gpus)
    got = [rank_device(request_, r, local_world) for r in range(local_world)]
    assert [(str(d), b) for d, b in got] == expected


def test_a_gpu_over_gloo_sends_through_the_cpu_and_over_nccl_directly():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert DistContext(0, 2, gpu, "gloo").wire == cpu
    assert DistContext(0, 2, gpu, "nccl").wire == gpu
    assert DistContext(0, 2, cpu, "gloo").wire == cpu


@pytest.mark.parametrize("gpus,name,message", [
    (1, "cuda:7", "device 'cuda:7' asked for, but this machine has 1 GPU(s): cuda:0"),
    (0, "cuda", "device 'cuda' asked for, but CUDA is not available here"),
    (0, "tpu", "use auto, cpu, cuda or cuda:K"),
    (0, "mps", "use auto, cpu, cuda or cuda:K"),
])
def test_a_device_that_does_not_exist_is_refused(monkeypatch, gpus, name, message):
    FakeCuda(monkeypatch, gpus)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        pick_device(name)
    with pytest.raises(ValueError):
        rank_device(name, 0, 2)


@pytest.mark.parametrize("script", ["verletTest", "distSg", "PVD", "race"])
def test_a_device_that_does_not_exist_exits_2_with_one_line(tmp_path, monkeypatch, script):
    FakeCuda(monkeypatch, 1)
    code, err = refused(script, "--device", "cuda:7", "--results-dir", tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "cuda:7" in err and "1 GPU(s)" in err and not tmp_path.joinpath("res").exists()


def test_gpipe_on_ranks_sharing_a_gpu_over_gloo_exits_2_with_one_line(tmp_path, monkeypatch):
    FakeCuda(monkeypatch, 1)
    code, err = refused("race", "--device", "cuda", "--trainers", "bp-all,gpipe", "--results-dir", tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "gpipe and 1f1b need a GPU per rank" in err


def test_a_resume_on_a_machine_with_fewer_gpus_restores_the_ones_it_has(monkeypatch):
    FakeCuda(monkeypatch, 1)
    restored = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((int(state[0]), device)))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: pytest.fail("restores every saved GPU"))
    saved = {"torch": torch.get_rng_state(), "cuda": [torch.tensor([k], dtype=torch.uint8) for k in range(4)]}
    checkpoint.set_rng_state(saved)
    assert restored == [(0, 0)]  # GPU 0's state onto GPU 0; GPUs 1-3 are not here


# ---- clocks that never block ---------------------------------------------------------------

def test_the_stage_profile_on_a_gpu_never_waits_while_work_is_pending(monkeypatch):
    """A receive posted on a communication stream must keep overlapping the compute after
    it: the profile records events, reads those that have completed, and waits for none
    until its summary, at the end of the run."""
    fake = FakeCuda(monkeypatch, 1)
    prof = StageProfile(torch.device("cuda", 0), timeline_batches=1)
    prof.start()
    for kind in ("wait input", "forward", "send", "backward", "step"):
        with prof(kind):
            pass
    prof.batch += 1
    assert fake.calls == []  # no device-wide sync, no stream sync, no event wait
    assert sum(prof.seconds.values()) == 0  # nothing read: no event has completed
    fake.complete_all()  # the GPU catches up; the next interval reads them, still without waiting
    with prof("forward"):
        pass
    assert fake.calls == []
    assert prof.seconds["wait input"] == 1.0 and prof.seconds["backward"] == 1.0
    prof.stop()
    summary = prof.summary()  # the end of the run: only now does anything wait, and only on its own events
    assert all(kind == "event wait" for kind, _ in fake.calls)
    assert summary["busy_s"] == 4.0 and summary["idle_s"] == 1.0 and summary["communication_s"] == 1.0
    assert summary["wall_s"] == fake.events[-1].at - fake.events[1].at  # origin: start()'s mark
    assert [e[0] for e in summary["timeline"]] == ["wait input", "forward", "send", "backward", "step"]


def test_the_recorder_waits_for_the_compute_stream_only(monkeypatch):
    fake = FakeCuda(monkeypatch, 1)
    w = torch.nn.Parameter(torch.ones(3))
    rec = Recorder({"w": w}, batches_per_epoch=2, points_per_epoch=1, device=torch.device("cuda", 0))
    rec.start()
    rec.batch_end(torch.tensor(1.0), 4)
    rec.batch_end(torch.tensor(1.0), 4)
    rec.epoch_end()
    assert fake.calls and all(kind == "stream sync" for kind, _ in fake.calls)
    assert len(rec.points) == 2


def test_pvd_reads_its_block_clocks_after_the_blocks_work(monkeypatch):
    import datasets
    import pvd.algorithm as algorithm
    from models import build_model

    synced = []
    monkeypatch.setattr(algorithm, "sync", lambda device: synced.append(str(device)))
    data = datasets.load("DIGITS")
    torch.manual_seed(0)
    model = build_model("resnet", (1, 8, 8), 10, 4, 0.5)
    algorithm.PVD(model, data, algorithm.PVDConfig(num_proc=2, iterations=1, steps=2, batch_size=64)).iteration(1)
    assert synced == ["cpu"] * 4  # each block: after its direction share, after its solve and score


# ---- costs measured where the ranks run ----------------------------------------------------

def test_the_race_times_its_cuts_on_the_ranks_device(monkeypatch):
    import datasets
    from models import build_model

    asked, timed_on = [], []

    def rank_device_of(request, nprocs):
        asked.append((request, nprocs))
        return torch.device("meta")  # stands for the ranks' GPU: the batch must be moved there

    def measure(net, x, y, threads, **kw):
        timed_on.append((x.device.type, y.device.type))
        return Costs([1.0] * 4)  # equal layers: the even cuts

    monkeypatch.setattr(pipeline_experiments, "this_rank_device", rank_device_of)
    monkeypatch.setattr(pipeline_experiments, "costs_with_threads", measure)
    data = datasets.load("DIGITS")
    race = racing.Race(build=lambda n, h: build_model("resnet", (1, 8, 8), 10, n, h), n_layers=4, h=0.5, data=data,
                       epochs=1, batch_size=32, lr=1e-3, device=torch.device("cuda", 0))
    assert racing._cuts(race, race.network(), "delayed") == [(0, 2), (2, 4)]
    assert asked == [("cuda:0", 2)] and timed_on == [("meta", "meta")]


def test_costs_measured_on_several_devices_count_each_piece_at_its_slowest():
    a = Costs([1.0, 5.0, 1.0, 1.0], first=0.5, last=2.0, cuts={1: 0.1, 2: 0.1, 3: 0.1})
    b = Costs([1.0, 1.0, 1.0, 6.0], first=0.1, last=3.0, cuts={1: 0.2, 2: 0.0, 3: 0.3})
    slowest = Costs.slowest([a, b])
    assert slowest.layers == [1.0, 5.0, 1.0, 6.0] and slowest.first == 0.5 and slowest.last == 3.0
    assert slowest.cuts == {1: 0.2, 2: 0.1, 3: 0.3}
    assert balanced_bounds(a, 2) == [(0, 2), (2, 4)]  # what the first device alone would choose
    assert balanced_bounds(slowest, 2) == [(0, 3), (3, 4)]  # the second's slow last layer moves the cut


def test_the_stage_profile_books_a_known_wait_as_idle_time():
    import time

    prof = StageProfile(torch.device("cpu"))
    prof.start()
    with prof("wait gradient"):
        time.sleep(0.05)
    with prof("forward"):
        time.sleep(0.02)
    prof.stop()
    summary = prof.summary()
    assert 0.05 <= summary["idle_s"] < 0.07 and 0.02 <= summary["busy_s"] < 0.04
    assert summary["idle_s"] + summary["busy_s"] <= summary["wall_s"] < summary["idle_s"] + summary["busy_s"] + 0.02
