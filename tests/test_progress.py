"""Phases reported in one process (a Ray actor's PhaseLog) and shown in another through a PhaseMirror."""

import threading

from agentqat.progress import PhaseLog, PhaseMirror, phase


class Recorder:
    """A Reporter that keeps every event."""

    def __init__(self):
        self.events = []

    def phase_started(self, name, total=None, detail=""):
        self.events.append(("start", name, total, detail))

    def phase_advanced(self, steps=1):
        self.events.append(("step", steps))

    def phase_finished(self, name, seconds):
        self.events.append(("end", name))


def test_a_phase_log_keeps_its_events_until_drained():
    log = PhaseLog()
    with phase(log, "collecting calibration statistics", total=4, detail="4 windows") as step:
        step(1)
        step(3)
    events = log.drain()
    assert events[:3] == [("start", "collecting calibration statistics", 4, "4 windows"), ("step", 1), ("step", 3)]
    assert events[3][:2] == ("end", "collecting calibration statistics") and events[3][2] >= 0
    assert log.drain() == []


def test_a_mirror_replays_drained_events_with_the_label_of_their_source():
    log, shown = PhaseLog(), Recorder()
    mirror = PhaseMirror(shown)
    with phase(log, "loading the model", detail="tiny"):
        pass
    with phase(log, "base references", total=3) as step:
        step(2)
        mirror.show("w0", log.drain(), "worker-0")  # a poll in the middle of a phase
        step(1)
    mirror.show("w0", log.drain(), "worker-0")
    assert shown.events == [
        ("start", "loading the model", None, "worker-0: tiny"),
        ("end", "loading the model"),
        ("start", "base references", 3, "worker-0"),
        ("step", 2),
        ("step", 1),
        ("end", "base references"),
    ]


def test_a_mirror_shows_one_source_at_a_time():
    first, second, shown = PhaseLog(), PhaseLog(), Recorder()
    mirror = PhaseMirror(shown)
    first.phase_started("collecting calibration statistics", 2, "8 windows")
    second.phase_started("collecting calibration statistics", 2, "8 windows")
    mirror.show("a", first.drain(), "worker-0, match gptq-w4")
    mirror.show("b", second.drain(), "worker-1")  # left out while worker-0's phase is open
    first.phase_finished("collecting calibration statistics", 1.0)
    second.phase_advanced(2)
    second.phase_finished("collecting calibration statistics", 1.0)
    mirror.show("b", second.drain(), "worker-1")  # still left out: its start was not shown
    mirror.show("a", first.drain())
    second.phase_started("base references", 1)
    mirror.show("b", second.drain(), "worker-1")
    mirror.finish()  # worker-1 stopped reporting
    assert shown.events == [
        ("start", "collecting calibration statistics", 2, "worker-0, match gptq-w4: 8 windows"),
        ("end", "collecting calibration statistics"),
        ("start", "base references", 1, "worker-1"),
        ("end", "base references"),
    ]


def test_a_phase_log_takes_events_from_threads():
    log = PhaseLog()
    threads = [threading.Thread(target=lambda: [log.phase_advanced() for _ in range(1000)]) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(steps for _, steps in log.drain()) == 4000
