"""scripts/forecast.py and harness/forecast.py: bad input exits 2 with one line; the
forecast of a measured profile has the shape and the orderings the schedules imply."""
import json

import pytest
import torch

import datasets
from harness.forecast import Profile, add_rule, forecast, profile_network, stage_costs
from harness.simulate import LINKS, StageCost
from models import build_model
from synthetic.balance import Costs, LayerTimes
from tests.helpers import refused, run_main

torch.set_num_threads(1)


@pytest.mark.parametrize("flag, value, message", [
    ("--devices", "0,2", "DEVICES must be distinct counts >= 1 separated by commas, such as 1,2,4,8; got '0,2'"),
    ("--devices", "2,x", "DEVICES must be distinct counts >= 1 separated by commas, such as 1,2,4,8; got '2,x'"),
    ("--link", "fast", "LINK must be measured, one of nvlink4, pcie4, ib100, 10gbe, free, or GBPS,LATENCY_US such "
                       "as 10,30; got 'fast'"),
    ("--link", "0,5", "LINK '0,5': the bandwidth must be > 0 and the latency >= 0"),
    ("--trainers", "bp-all,pvd", "unknown or unforecast trainer 'pvd'; valid: "),
])
def test_bad_devices_link_or_trainers_exit_2_with_one_line(tmp_path, flag, value, message):
    code, err = refused("forecast", "--dataset", "DIGITS", flag, value, "--results-dir", tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.strip().startswith(f"error: {message}"), err


def test_the_script_forecasts_every_trainer_on_every_count_and_writes_traces(tmp_path):
    result, out = run_main("forecast", "--dataset", "DIGITS", "--n", "4", "--width", "64", "--batch-size", "32",
                           "--devices", "1,2,4", "--repeats", "1", "--link", "10gbe", "--schedule-overhead", "0",
                           "--trainers", "bp-all,ddp,gpipe,1f1b,pipeline-delayed,pipeline-local",
                           "--results-dir", tmp_path)
    table = result["forecast"]
    assert set(table) == {"bp-all", "ddp", "gpipe", "1f1b", "pipeline-delayed", "pipeline-local"}
    for trainer, by_m in table.items():
        assert set(by_m) == {"1", "2", "4"}
        assert by_m["1"]["epoch_s"] == pytest.approx(table["bp-all"]["1"]["epoch_s"])  # one device: backprop
        assert len(by_m["4"]["busy"]) == (1 if trainer == "bp-all" else 4 if trainer != "ddp" else 1)
        assert all(0 < b <= 1 + 1e-9 for b in by_m["4"]["busy"]) and min(by_m["4"]["memory_mb"]) > 0
    assert table["pipeline-delayed"]["4"]["delays"][:3] == [3, 2, 1]  # M - 1 - i: every device busy
    assert "(seconds per epoch, mean busy fraction" in out
    run_dir = tmp_path / "forecast"
    (run,) = run_dir.iterdir()
    trace = json.loads((run / "forecast_trace_pipeline-local_M4.json").read_text())
    assert {e["tid"] for e in trace["traceEvents"] if e["ph"] == "X"} >= {0, 1, 2, 3}
    saved = json.loads((run / "forecast.json").read_text())  # the profile is in the file, not the RESULT line
    assert saved["forecast"] == table and "profile" not in result
    profile = saved["profile"]
    assert len(profile["times"]["32"]["forward"]) == 4 and len(profile["param_bytes"]) == 4
    assert len(profile["bounds"]["delayed, M = 4"]) == 4 and profile["variation"]["32"]


def test_a_balanced_pipeline_forecast_is_a_quarter_of_backprop_on_four_free_devices():
    """Hand-made profile: 8 identical layers, no opening layer, classifier or step; the
    pipeline's stages are balanced, the link free: an epoch on 4 devices takes a quarter
    of one device's, less the fill; GPipe's bubble is (M - 1)/(microbatches + M - 1)."""
    t = LayerTimes([1.0] * 8, [2.0] * 8, [0.0] * 8)
    half = LayerTimes([0.5] * 8, [1.0] * 8, [0.0] * 8)
    profile = Profile({64: t, 16: half}, [4 * 64] * 9, [1000] * 8)
    costs = Costs([3.0] * 8, cuts={}, layer_extra=[])
    for rule in ("local", "delayed", "exact"):
        add_rule(profile, costs, rule, 4)
    assert profile.bounds[("local", 4)] == [(0, 2), (2, 4), (4, 6), (6, 8)]
    kw = {"batch": 64, "batches": 400, "link": LINKS["free"], "microbatches": 4}
    one = forecast(profile, "bp-all", 1, **kw)["epoch_s"]
    assert one == pytest.approx(400 * 24)
    for rule in ("local", "delayed"):
        assert forecast(profile, f"pipeline-{rule}", 4, **kw)["epoch_s"] == pytest.approx(one / 4, rel=0.01)
    gpipe = forecast(profile, "gpipe", 4, **kw)
    assert 1 - gpipe["busy"][0] == pytest.approx(3 / 7)
    stages = stage_costs(profile, [(0, 4), (4, 8)], 64)
    assert [s.out_bytes for s in stages] == [4 * 64 * 64] * 2 and stages[0].forward == 4.0


def test_a_rules_extra_work_follows_the_cuts_a_run_took():
    """A stage's extra work is its rule's work at its own cut and its layers' further work:
    given other cuts (those a measured run's balancer chose), the forecast follows them."""
    t = LayerTimes([1.0] * 6, [2.0] * 6, [0.0] * 6)
    profile = Profile({64: t}, [4 * 64] * 7, [1000] * 6)
    add_rule(profile, Costs([3.0] * 6, cuts={2: 0.5, 3: 0.25, 4: 0.5}, layer_extra=[0.1] * 6), "local", 2)
    assert profile.bounds[("local", 2)] == [(0, 3), (3, 6)]
    assert profile.extra("local", 2) == pytest.approx([0.25 + 0.3, 0.0])  # the last stage has no cut
    kw = {"batch": 64, "batches": 10, "link": LINKS["free"]}
    even = forecast(profile, "pipeline-local", 2, **kw)["epoch_s"]
    profile.bounds[("local", 2)] = [(0, 2), (2, 6)]
    assert profile.extra("local", 2) == pytest.approx([0.5 + 0.2, 0.0])
    assert forecast(profile, "pipeline-local", 2, **kw)["epoch_s"] > even  # 4 layers on the last stage
    assert profile.extra("delayed", 2) is None  # a rule not profiled


def test_each_trainer_on_m_devices_is_one_run_whose_timeline_is_its_forecast():
    """``trainer_run``: DDP on M processes at B / M a device, GPipe and 1F1B on the exact
    rule's cuts at their micro-batches, the pipeline at its rule's cuts and delays (cuts
    the profile lacks balanced on its times); the forecast is that run's timeline."""
    from harness.forecast import trainer_run

    t = LayerTimes([1.0] * 8, [2.0] * 8, [0.0] * 8)
    profile = Profile({64: t, 16: t, 8: t}, [4 * 64] * 9, [1000] * 8)
    add_rule(profile, Costs([3.0] * 8, cuts={}, layer_extra=[]), "delayed", 4)
    ddp = trainer_run(profile, "ddp", 8, 64, 10, 4)
    assert (ddp.schedule, ddp.processes, len(ddp.stages)) == ("ddp", 8, 8)
    one_f = trainer_run(profile, "1f1b", 4, 64, 10, 2)  # 1F1B runs at least M micro-batches
    assert (one_f.microbatches, one_f.processes, one_f.stages[0].out_bytes) == (4, 4, 4 * 64 * 16)
    assert [s.forward for s in one_f.stages] == [2.0] * 4  # the exact rule's cuts, not profiled: balanced
    pipe = trainer_run(profile, "pipeline-delayed", 4, 64, 10, 4)
    assert pipe.delays == (3, 2, 1, 1) and [s.forward for s in pipe.stages] == [2.0] * 4  # balanced: the profile's
    kw = {"batch": 64, "batches": 10, "link": LINKS["free"], "microbatches": 4}
    for trainer, run in (("ddp", ddp), ("pipeline-delayed", pipe)):
        simulated = run.timeline(LINKS["free"]).run().makespan
        assert forecast(profile, trainer, run.processes, **kw)["epoch_s"] == pytest.approx(simulated)


def test_gpipe_pays_for_its_micro_batches_and_each_schedule_for_its_own_work_per_operation():
    """Hand-made profile: 4 micro-batches, of which the last 3 run their backward into held
    gradients at 1.5x; the gradients' scaling (2 s for the whole network) falls on each
    stage by its share of the parameters; a schedule's own work is added to every forward
    and backward it runs."""
    from harness.forecast import Microbatching

    t = LayerTimes([1.0] * 8, [2.0] * 8, [0.0] * 8)
    profile = Profile({16: t, 64: t}, [4 * 64] * 9, [1000] * 8, microbatch={16: Microbatching(1.5, 2.0)})
    (plain,) = stage_costs(profile, [(0, 4)], 16)
    (micro,) = stage_costs(profile, [(0, 4)], 16, microbatches=4)
    assert plain.backward == 8.0 and micro.backward == pytest.approx(8.0 * (1 + 3 * 1.5) / 4)
    assert plain.step == 0.0 and micro.step == pytest.approx(2.0 * 4000 / 8000)
    add_rule(profile, Costs([3.0] * 8, cuts={}, layer_extra=[]), "exact", 2)
    kw = {"batch": 64, "batches": 10, "link": LINKS["free"], "microbatches": 4}
    before = {t: forecast(profile, t, 2, **kw)["epoch_s"] for t in ("gpipe", "pipeline-exact")}
    profile.overhead = {"gpipe": 0.5, "pipeline-exact": 0.25, "pipeline-delayed": 9.0}
    # GPipe, 10 batches: 4 forwards and 4 backwards on one stage, 2 more waited for each way
    assert forecast(profile, "gpipe", 2, **kw)["epoch_s"] == pytest.approx(before["gpipe"] + 10 * 10 * 0.5)
    # the exact pipeline runs in lockstep: every stage's forward and backward a batch in turn
    assert forecast(profile, "pipeline-exact", 2, **kw)["epoch_s"] == pytest.approx(
        before["pipeline-exact"] + 10 * 4 * 0.25)


def test_a_pipeline_that_sends_no_gradient_back_pays_its_own_work_on_its_forwards_only():
    """Our pipeline's own work is measured under a rule whose every forward and backward
    sends or receives a message; under ``local`` no gradient travels back, so its
    backwards carry none of it."""
    from harness.sleep_workload import SleepRun

    stages = [StageCost(1.0, 2.0), StageCost(1.0, 2.0)]
    for receives in (True, False):
        tl = SleepRun("pipeline", stages, 3, 64, delays=(1, 1), receives=receives).timeline(LINKS["free"], 0.25)
        assert {op.duration for op in tl.ops if op.name.startswith("F")} == {1.25}
        assert {op.duration for op in tl.ops if op.name.startswith("B")} == ({2.25} if receives else {2.0})


def test_a_schedules_own_work_an_operation_makes_its_idle_schedule_last_as_measured():
    """GPipe at 4 micro-batches over 2 idle stages on a free link: o a forward or backward
    makes 10 (4 + 1 forwards, 4 + 1 backwards) a batch on the critical path; DDP's every
    layer's forward and backward."""
    from harness.forecast import overhead_for
    from harness.sleep_workload import SleepRun

    idle = [StageCost(0.0, 0.0), StageCost(0.0, 0.0)]
    free = LINKS["free"]
    assert overhead_for(SleepRun("gpipe", idle, 5, 64, microbatches=4), free, 5 * 10 * 0.002) == pytest.approx(0.002)
    assert overhead_for(SleepRun("pipeline", idle, 5, 64, delays=(1, 1)), free, 0.5) > 0
    assert overhead_for(SleepRun("pipeline", [StageCost(1.0, 1.0)] * 2, 5, 64, delays=(1, 1)), free, 0.5) == 0.0
    # DDP, 2 layers: 4 operations a step, each with its own work 1.1x slower with both devices computing
    layers = [StageCost(1.0, 1.0)] * 2
    assert overhead_for(SleepRun("ddp", layers, 5, 64), free, 5 * 4 * 1.1 * 1.1, 1.1) == pytest.approx(0.1)


def test_the_validation_measures_each_schedules_own_work_at_the_cut_its_runs_take():
    """A conv network's first unit has a state twice the second's: the validation's own
    work sends the messages of the cut that GPipe, 1F1B and the pipelines take (the
    exact rule's); the forecast's stands for every cut, at the middle."""
    from harness.forecast import own_work_run, trainers_cut

    t = LayerTimes([0.002] * 4, [0.004] * 4, [0.0] * 4)
    profile = Profile({64: t, 16: t}, [8, 8, 4, 4, 4], [1000] * 4)  # bytes a sample entering each layer
    assert trainers_cut(profile) == 2  # no cut measured: balanced on the profile's times
    assert own_work_run(profile, "pipeline-exact", 64, 5, 4).stages[0].out_bytes == 4 * 64  # the middle
    profile.bounds[("exact", 2)] = [(0, 1), (1, 4)]
    for schedule, samples in (("pipeline-delayed", 64), ("gpipe", 16)):  # gpipe: a micro-batch of 64 / 4
        cut = trainers_cut(profile)
        assert own_work_run(profile, schedule, 64, 5, 4, cut=cut).stages[0].out_bytes == 8 * samples
        busy = own_work_run(profile, schedule, 64, 5, 4, busy=True, cut=cut).stages
        assert [s.forward for s in busy] == pytest.approx([0.002, 0.006])


def test_our_pipelines_own_work_is_measured_under_each_rules_own_schedule():
    """The exact rule's stages take turns, a decoupled rule's compute at once, and a local
    rule sends no gradient back: each rule's own work is measured at its delays, with its
    extra work, and each trainer pays its own rule's figure."""
    from harness.forecast import own_work_run, schedule_of, schedules_of

    t = LayerTimes([0.002] * 4, [0.004] * 4, [0.0] * 4)
    profile = Profile({64: t, 16: t}, [8] * 5, [1000] * 4)
    add_rule(profile, Costs([0.006] * 4, cuts={2: 0.003}, layer_extra=[]), "local", 2)
    runs = {r: own_work_run(profile, f"pipeline-{r}", 64, 5, 4, busy=True) for r in ("exact", "delayed", "local")}
    assert {r: (run.delays, run.receives) for r, run in runs.items()} == {
        "exact": ((0, 0), True), "delayed": ((1, 1), True), "local": ((1, 1), False)}
    assert runs["local"].stages[0].extra > 0 == runs["exact"].stages[0].extra
    assert schedules_of(["bp-1t", "pipeline-local", "gpipe", "pipeline-exact"]) == \
        ["gpipe", "pipeline-exact", "pipeline-local"] and schedule_of("bp-all") is None


@pytest.mark.slow
@pytest.mark.parametrize("busy", [False, True])
def test_two_processes_measure_each_schedules_own_work_idle_and_computing(gloo_link, busy):
    """Stages that do nothing, or that compute the profile's durations (2 and 4 ms a layer);
    DDP all-reduces gradients of its layers' sizes."""
    from harness.forecast import measure_overheads

    t = LayerTimes([0.002] * 4, [0.004] * 4, [0.0] * 4)
    profile = Profile({64: t, 32: t, 16: t}, [4 * 64] * 5, [1000] * 4)
    found = measure_overheads(profile, ["pipeline-local", "bp-1t", "1f1b", "ddp"], gloo_link, 64, 4,
                              batches=20, rounds=1, busy=busy, log=lambda s: None)
    assert set(found) == {"pipeline-local", "1f1b", "ddp"} and all(0 <= o < 0.05 for o in found.values())
    # one run's own work (about 1 ms an operation) is within the noise of two processes on
    # two cores, busy or idle, and one schedule's figure reads 0 in about one run of ten
    # (the validation measures it before each round of runs, and each row is the median
    # run): some schedule's reads more
    assert max(found.values()) > 0


def test_the_profile_counts_every_layers_bytes_and_times_at_each_batch_size():
    data = datasets.load("DIGITS")
    torch.manual_seed(0)
    net = build_model("verlet", (1, 8, 8), 10, 4, 0.5, width=64)
    profile = profile_network(net, data.x_train[:32], data.y_train[:32], [8, 32], repeats=1)
    assert set(profile.times) == {8, 32} and profile.n_layers == 4
    assert all(len(t.forward) == 4 and min(t.forward + t.backward) > 0 for t in profile.times.values())
    assert profile.param_bytes == [4 * (64 * 64 + 64)] * 4
    assert profile.state_bytes[1] == 2 * 4 * 64  # Verlet's state: Y and Z, 64 floats each a sample


@pytest.fixture(scope="module")
def gloo_link():
    from harness.forecast import measure_link

    return measure_link()[0]


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["pipeline", "1f1b"])
def test_the_sleep_workload_on_four_processes_is_within_5_percent_of_its_forecast(trainer, gloo_link):
    """Four processes that sleep their stages' durations and send real tensors over gloo
    (our transport; torch's Schedule1F1B) take what the simulation says."""
    from harness.sleep_workload import SleepRun, run_sleep

    stages = [StageCost(forward=0.2, backward=0.4, step=0.02, out_bytes=4 * 64 * 785)] * 4
    run = SleepRun("1f1b", stages, 2, 256, microbatches=4) if trainer == "1f1b" \
        else SleepRun("pipeline", stages, 8, 64, delays=(3, 2, 1, 1))
    measured, predicted = run_sleep(run, gloo_link)
    assert predicted == pytest.approx(measured, rel=0.05)


def test_the_forecast_race_times_each_epoch_by_its_forecast_and_names_the_first():
    from harness.forecast import race_table, winners

    curves = {"bp-all": {1: [0.80, 0.85, 0.90], 4: [0.80, 0.85, 0.90]},
              "pipeline-local": {1: [0.80, 0.85, 0.90], 4: [0.82, 0.86, 0.87]}}
    table = {"bp-all": {1: {"epoch_s": 10.0}, 4: {"epoch_s": 10.0}},
             "pipeline-local": {1: {"epoch_s": 10.0}, 4: {"epoch_s": 3.0}}}
    target, times = race_table(curves, table, 5.0)  # backprop's 0.90 less 5 points
    assert target == pytest.approx(0.85)
    assert times == {"bp-all": {1: 20.0, 4: 20.0}, "pipeline-local": {1: 20.0, 4: 6.0}}
    assert winners(times, [1, 4]) == {1: "bp-all", 4: "pipeline-local"}
    _, never = race_table(curves, table, 0.0)
    assert never["pipeline-local"][4] is None and winners(never, [4]) == {4: "bp-all"}


def test_repeated_validation_runs_give_the_row_of_the_run_with_the_median_error():
    from harness.forecast import median_run

    runs = [{"trainer": "ddp", "measured_epoch_s": s, "forecast_epoch_s": 2.0, "error": 2.0 / s - 1}
            for s in (2.0, 2.6, 1.9)]  # the second run stretched by a burst of the machine's slowness
    row = median_run(runs)
    assert row["measured_epoch_s"] == 2.0 and row["error"] == 0.0 and row["runs"] == runs
    assert median_run(runs[:2])["measured_epoch_s"] == 2.6  # an even count: the lower middle error
    assert median_run(runs[:1]) == runs[0]


def test_the_validation_runs_every_workload_in_each_round_and_keeps_each_rows_median_run(monkeypatch):
    """A workload's runs lie a round apart, minutes on the real networks (the machine's
    speed drifts over minutes): every workload is profiled first, each round runs every
    trainer on every workload, in the other order the next round, at the sharing factor
    and own work measured just before it."""
    import types

    from harness import forecast as fc
    from harness.configs import ForecastRun

    order = []
    shares, measured = iter([1.1, 1.2, 1.3, 1.4, 1.5, 1.6]), []
    workloads = [types.SimpleNamespace(name=n, pace=lambda: 1.0, sharing=lambda: next(shares),
                                       profile=Profile({}, [], []),
                                       own_work=lambda names, log, n=n: measured.append(n) or {"ddp": len(measured)})
                 for n in ("a", "b")]
    monkeypatch.setattr(fc, "validation_workloads", lambda cfg, link, names, log: iter(workloads))

    def run(w, trainer, before, sharing):
        order.append((w.name, trainer, sharing, w.profile.overhead["ddp"]))
        k = sum(1 for o in order if o[:2] == (w.name, trainer))  # this pair's k-th run: errors 0.3, 0.1, 0.2
        return {"workload": w.name, "trainer": trainer, "devices": 1 if trainer == "bp-1t" else 2,
                "error": (0.3, 0.1, 0.2)[k - 1], "pace_s": (before, 1.0), "measured_epoch_s": 1.0,
                "forecast_epoch_s": 1.0, "pace": 1.0, "first_epoch_s": 1.0}

    monkeypatch.setattr(fc, "validation_run", run)
    cfg = ForecastRun().replace(TRAINERS="ddp,pipeline-local", VALIDATE_RUNS=3)
    rows = fc.validate(cfg, LINKS["free"], log=lambda *a: None)
    one = [("a", "bp-1t"), ("a", "ddp"), ("a", "pipeline-local"), ("b", "bp-1t"), ("b", "ddp"), ("b", "pipeline-local")]
    two = [("a", "pipeline-local"), ("a", "ddp"), ("a", "bp-1t"), ("b", "pipeline-local"), ("b", "ddp"), ("b", "bp-1t")]
    assert [o[:2] for o in order] == one + two + one
    assert [o[2:] for o in order] == [(s, k) for k, s in enumerate((1.1, 1.2, 1.3, 1.4, 1.5, 1.6), 1) for _ in range(3)]
    assert measured == ["a", "b"] * 3
    assert [(r["workload"], r["trainer"], r["error"], len(r["runs"])) for r in rows] == \
        [(w, t, 0.2, 3) for w, t in one]


def test_a_validation_run_is_measured_by_the_median_of_its_epochs_after_the_first():
    from harness.forecast import steady_epoch_s, steady_epochs

    curve = [{"seconds": s} for s in (0.0, 3.0, 5.0, 7.5, 9.5)]  # epochs of 3 (start-up), 2, 2.5 and 2 s
    assert steady_epochs(curve) == pytest.approx([2.0, 2.5, 2.0])
    assert steady_epoch_s(curve) == pytest.approx(2.0)


@pytest.mark.slow
def test_two_processes_computing_at_once_measure_how_much_they_slow_each_other():
    from harness.forecast import sharing_factor

    torch.manual_seed(0)
    net = build_model("verlet", (1, 8, 8), 10, 2, 0.5, width=64)
    data = datasets.load("DIGITS")
    factor = sharing_factor(net, data.x_train[:32], data.y_train[:32], rounds=1)
    assert 0.5 < factor < 4.0  # two one-thread processes on two cores: about 1


@pytest.mark.slow
def test_processes_stepping_on_their_own_are_forecast_by_the_machines_pace_and_sharing_alone():
    from harness.forecast import Workload, floor_run

    torch.manual_seed(0)
    net = build_model("verlet", (1, 8, 8), 10, 2, 0.5, width=64)
    data = datasets.load("DIGITS")
    x, y = data.x_train[:32], data.y_train[:32]
    w = Workload("tiny", net, x, y, profile_network(net, x, y, [32]), None,
                 {"batch": 32, "batches": 20, "link": LINKS["free"], "microbatches": 1, "max_in_flight": 0})
    one = floor_run(w, 1, w.pace(), 2.0)
    assert one["devices"] == 1 and one["sharing"] == 1.0  # one process shares nothing
    two = floor_run(w, 2, one["pace_s"][1], 1.5)
    assert two["devices"] == 2 and two["sharing"] == 1.5 and two["pace_s"][0] == one["pace_s"][1]
    for row in (one, two):  # an epoch of 20 steps, forecast at the pace around it: a few ms a step
        assert row["measured_epoch_s"] > 0 and row["trainer"] == "floor"
        assert row["error"] == pytest.approx(row["forecast_epoch_s"] / row["measured_epoch_s"] - 1)
    # the step that the pace times is the step the processes take: one process within a factor 2
    assert -0.5 < one["error"] < 1.0
    # the sharing scales the pace: the same forecast at 1.5x the pace read around the run
    assert two["forecast_epoch_s"] / two["pace"] == pytest.approx(one["forecast_epoch_s"] / one["pace"], rel=0.02)


def test_a_validation_row_forecasts_its_run_at_the_machines_speed_around_it():
    from harness.forecast import validation_row

    profile = Profile({8: LayerTimes([0.1] * 2, [0.2] * 2, [0.0] * 2)}, [32] * 3, [100] * 2)  # a 0.6 s step
    curve = [{"seconds": s} for s in (0.0, 9.0, 15.0, 21.0, 27.0)]  # steady epochs of 6 s
    row = validation_row(profile, "bp-1t", 1, curve, 0.72, 1.1, batch=8, batches=10, link=LINKS["free"])
    assert row["pace"] == pytest.approx(1.2) and row["sharing"] == 1.0  # one device shares nothing
    assert row["forecast_at_profile_pace_s"] == pytest.approx(6.0)
    assert row["forecast_epoch_s"] == pytest.approx(7.2) and row["error"] == pytest.approx(0.2)
    assert row["measured_epoch_s"] == pytest.approx(6.0) and row["first_epoch_s"] == pytest.approx(9.0)


def test_devices_in_lock_step_wait_for_the_slower_step_the_profile_measured():
    """Hand-made profile whose steps take 0.8 or 1.2 times their mean: one device's epoch is
    the mean's; DDP's two devices wait for the slower each batch (1.2 with probability 3/4:
    1.1 times the mean); a decoupled pipeline's slack absorbs most of it."""
    t = LayerTimes([1.0] * 4, [2.0] * 4, [0.0] * 4)
    profile = Profile({64: t, 32: t}, [4 * 64] * 5, [1000] * 4, variation={64: (0.8, 1.2), 32: (0.8, 1.2)})
    add_rule(profile, Costs([3.0] * 4, cuts={}, layer_extra=[]), "local", 2)
    kw = {"batch": 64, "batches": 400, "link": LINKS["free"]}
    for trainer, m, slower in (("bp-1t", 1, 1.0), ("ddp", 2, 1.1)):
        varied, mean = (forecast(profile, trainer, m, vary=v, **kw)["epoch_s"] for v in (True, False))
        assert varied == pytest.approx(slower * mean, rel=0.03)
    local = [forecast(profile, "pipeline-local", 2, vary=v, **kw)["epoch_s"] for v in (True, False)]
    assert local[0] < 1.05 * local[1]
