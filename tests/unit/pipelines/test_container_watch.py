"""The stall watch over a container run's step containers, on a scripted engine and clock."""

from __future__ import annotations

from edgeloop.pipelines.container_watch import StallWatch


class Script:
    """``ps`` answers and a clock that each look advances by ``step`` seconds."""

    def __init__(self, answers, step=10.0):
        self.answers, self.step, self.now, self.looks = list(answers), step, 0.0, 0

    def clock(self):
        return self.now

    def ps(self):
        self.looks += 1
        self.now += self.step
        answer = self.answers[min(self.looks - 1, len(self.answers) - 1)]
        if isinstance(answer, Exception):
            raise answer
        return answer


def watch(script, stall_s=30.0):
    stalls = []
    return StallWatch(script.ps, stalls.append, stall_s=stall_s, clock=script.clock), stalls


STEP = ("c1", "running", "ghcr.io/edgeloop/edgeloop-pipeline:0.1.0")


def test_a_running_step_is_never_a_stall_however_long_it_takes():
    w, _ = watch(Script([[STEP]] * 50))
    assert all(w.check() is None for _ in range(50))


def test_a_gap_between_steps_shorter_than_stall_s_is_not_a_stall():
    exited = [(STEP[0], "exited", STEP[2])]
    nxt = [("c2", "running", STEP[2])]
    w, _ = watch(Script([[STEP], exited, [], nxt, nxt]))
    assert [w.check() for _ in range(5)] == [None] * 5


def test_a_step_gone_while_kfp_still_waits_is_named_after_stall_s():
    w, _ = watch(Script([[STEP], [], [], [], [], []]))
    reasons = [w.check() for _ in range(6)]
    assert reasons[:3] == [None, None, None]
    assert "c1" in reasons[3] and "removed" in reasons[3] and "edgeloop-pipeline" in reasons[3]
    assert w.seen["c1"].state == "removed"


def test_no_container_at_all_says_the_first_step_never_started():
    w, _ = watch(Script([[]] * 5))
    reasons = [w.check() for _ in range(5)]
    assert reasons[-1] and "none ever started" in reasons[-1]


def test_an_engine_that_does_not_answer_is_no_evidence_of_a_stall():
    w, _ = watch(Script([[STEP], OSError("engine busy"), OSError("engine busy"), [STEP], [STEP]]), stall_s=15)
    assert [w.check() for _ in range(5)] == [None] * 5


def test_the_watch_thread_reports_once_and_stops():
    script = Script([[STEP], []], step=1.0)
    stalls = []
    w = StallWatch(script.ps, stalls.append, stall_s=2, poll_s=0.01, clock=script.clock)
    w.start()
    w._thread.join(timeout=30)
    assert not w._thread.is_alive() and len(stalls) == 1 and "c1" in stalls[0] and w.reason == stalls[0]
    w.stop()
