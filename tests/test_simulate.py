"""harness/simulate.py on hand-made costs: the schedules' known times."""
import pytest

from harness.simulate import LINKS, Link, StageCost, backprop, ddp, decoupled_pipeline, in_flight, synchronous_pipeline

FREE = LINKS["free"]


@pytest.mark.parametrize("m", [2, 4, 8])
@pytest.mark.parametrize("microbatches", [1, 4, 8])
def test_gpipe_idles_m_minus_1_of_m_plus_microbatches_minus_1_and_1f1b_takes_as_long_with_less_memory(
        m, microbatches):
    stages = [StageCost(forward=1.0, backward=2.0)] * m
    gpipe = synchronous_pipeline(stages, 3, microbatches, FREE, "gpipe").run()
    one = synchronous_pipeline(stages, 3, microbatches, FREE, "1f1b").run()
    assert gpipe.makespan == pytest.approx(3 * 3.0 * (microbatches + m - 1))
    for device in gpipe.devices():
        assert 1 - gpipe.busy(device) / gpipe.makespan == pytest.approx((m - 1) / (microbatches + m - 1))
    assert one.makespan == pytest.approx(gpipe.makespan)
    assert in_flight(gpipe, "device 0") == microbatches
    assert [in_flight(one, d) for d in one.devices()] == [min(microbatches, m - s) for s in range(m)]


@pytest.mark.parametrize("m", [2, 4, 8])
def test_a_decoupled_pipeline_of_balanced_stages_on_free_links_takes_1_over_m_of_one_device(m):
    batches = 400
    whole = backprop(StageCost(forward=1.0 * m, backward=2.0 * m, step=0.1 * m), batches).run()
    stages = [StageCost(forward=1.0, backward=2.0, step=0.1)] * m
    for receives in (True, False):
        tl = decoupled_pipeline(stages, batches, [m - 1 - s for s in range(m)], FREE, receives).run()
        assert tl.makespan == pytest.approx(whole.makespan / m, rel=0.02)
        assert min(tl.busy(d) / tl.makespan for d in tl.devices()) > 0.98
    exact = decoupled_pipeline(stages, 20, [0] * m, FREE).run()  # one batch at a time; steps overlap
    assert exact.makespan == pytest.approx(20 * (m * 3.0 + 0.1))


def test_ddp_grows_with_the_all_reduce_when_the_link_is_slow():
    layers = [StageCost(forward=0.01, backward=0.02, param_bytes=4 * 784 * 785)] * 16
    fast, slow = (ddp(layers, 5, 4, link).run().makespan for link in (LINKS["nvlink4"], Link(1.0, 1e-4)))
    assert fast == pytest.approx(5 * 16 * 0.03, rel=0.01)  # the all-reduce hides behind the backward
    ring = 2 * 3 * (1e-4 + 8 * 16 * 4 * 784 * 785 / 4 / 1e9)  # all 16 layers' bytes cross a slow ring
    assert slow > fast + 5 * (ring - 16 * 0.02)  # at most a backward's worth of it hidden


def test_a_slow_link_stretches_a_pipeline_and_a_cycle_is_reported():
    stages = [StageCost(forward=1.0, backward=2.0, out_bytes=10 ** 9)] * 2
    tl = decoupled_pipeline(stages, 10, [1, 0], Link(8.0, 0.0)).run()  # 1 s a message, each way
    assert tl.makespan > decoupled_pipeline(stages, 10, [1, 0], FREE).run().makespan + 1.5
    trace = tl.chrome_trace()
    assert {e["ph"] for e in trace["traceEvents"]} == {"M", "X"}
    assert any(e["name"] == "state0" and e["dur"] == pytest.approx(1e6) for e in trace["traceEvents"])


def test_devices_sharing_a_host_slow_down_only_while_both_compute():
    stages = [StageCost(forward=1.0, backward=2.0)] * 2
    exact = decoupled_pipeline(stages, 10, [0, 0], FREE).run().makespan  # the stages take turns
    assert decoupled_pipeline(stages, 10, [0, 0], FREE).run_sharing(1.5).makespan == pytest.approx(exact)
    alone = decoupled_pipeline(stages, 200, [1, 1], FREE).run().makespan  # both compute all the time
    shared = decoupled_pipeline(stages, 200, [1, 1], FREE).run_sharing(1.5).makespan
    assert shared == pytest.approx(1.5 * alone, rel=0.02)


def test_one_device_standing_for_devices_alike_shares_the_host_all_along_but_its_all_reduce():
    """DDP simulates one device for all: each forward, backward and step is stretched by the
    whole factor; its all-reduce on the host (measured with both processes at once) is not."""
    layers = [StageCost(forward=1.0, backward=2.0, step=0.5, param_bytes=10 ** 9)] * 2
    link = Link(8.0, 0.0)  # 1 s for each of a 2-device ring's two passes over 1 GB
    alone = ddp(layers, 3, 2, link, host_comm=True).run().makespan
    shared = ddp(layers, 3, 2, link, host_comm=True).run_sharing(1.5, alike=True)
    reduces = sum(op.duration for op in shared.ops if op.args.get("comm"))
    assert reduces > 0 and shared.makespan == pytest.approx(1.5 * (alone - reduces) + reduces)


def test_a_devices_work_on_a_batch_varies_by_one_draw_and_lock_step_takes_the_slowest():
    """``vary``: every operation of one batch on one device (not an all-reduce) is scaled by
    one factor drawn from the ratios; one device standing for many takes the largest draw."""
    import random

    from harness.simulate import vary

    layers = [StageCost(forward=0.01, backward=0.02, param_bytes=100)] * 3
    tl = ddp(layers, 50, 2, LINKS["free"], host_comm=True)
    base = [op.duration for op in tl.ops]
    vary(tl, base, (0.5, 1.5), random.Random(0))
    factors = {}
    for op, d in zip(tl.ops, base):
        if op.name.startswith("allreduce"):
            assert op.duration == d
        elif d:
            factors.setdefault(op.args["batch"], set()).add(round(op.duration / d, 9))
    assert all(len(f) == 1 for f in factors.values())  # one draw a batch
    assert {f.pop() for f in factors.values()} == {0.5, 1.5}
    vary(tl, base, (0.5, 1.5), random.Random(0), slowest_of=64)
    assert all(op.duration == pytest.approx(1.5 * d) for op, d in zip(tl.ops, base) if op.name[0] in "fb")
    vary(tl, base, None, random.Random(0))
    assert [op.duration for op in tl.ops] == base
