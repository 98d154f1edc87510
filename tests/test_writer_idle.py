"""The writer's best-effort (idle) tasks: several queued at once all run, after regular work.

Before: one _IDLE token per idle task; two tokens found each other in the queue and were put back
forever, so the writer thread spun and no idle task ran (the daemon idled at 50-90 % of a core)."""

import threading

from carbonwatch.daemon.writer import Writer


def test_several_idle_tasks_all_run_and_regular_work_is_not_starved(tmp_path):
    writer = Writer(tmp_path / "w.db")
    writer.start()
    ran: list[str] = []
    all_ran = threading.Event()
    gate = threading.Event()
    try:
        # Hold the writer in a regular task so the idle tasks and the next regular one queue up.
        blocked = writer.submit(lambda store: gate.wait(30))

        def idle(name: str):
            def task(store) -> None:
                ran.append(name)
                if len(ran) == 4:  # the regular task and the three idle ones
                    all_ran.set()
            return task

        for name in ("a", "b", "c"):
            writer.submit_idle(idle(name))
        regular = writer.submit(lambda store: ran.append("regular"))
        gate.set()
        assert blocked.result(30) is True
        regular.result(30)
        assert all_ran.wait(30), f"idle tasks never ran: {ran}"
        assert ran == ["regular", "a", "b", "c"]
    finally:
        writer.close()


def test_idle_tasks_queued_at_close_still_run(tmp_path):
    writer = Writer(tmp_path / "w.db")
    writer.start()
    ran: list[int] = []
    for i in range(5):
        writer.submit_idle(lambda store, i=i: ran.append(i))
    writer.close()
    assert ran == [0, 1, 2, 3, 4]
