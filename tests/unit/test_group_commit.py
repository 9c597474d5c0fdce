"""Group commit: threads that arrive while a batch runs share the next one, and every thread
gets its own item's outcome."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from platform_app.services.group_commit import GroupCommit
from tests.conftest import wait_until


class Recorder:
    """A batch function that records its batches; the first batch waits until released, so
    that a test can queue items behind it."""

    def __init__(self, fail_items: frozenset = frozenset(), fail_batch_with: object = None):
        self.batches: list[list] = []
        self.first_started = threading.Event()
        self.release_first = threading.Event()
        self.fail_items = fail_items
        self.fail_batch_with = fail_batch_with

    def __call__(self, items: list) -> list:
        self.batches.append(list(items))
        if len(self.batches) == 1:
            self.first_started.set()
            assert self.release_first.wait(10)
            if self.fail_batch_with is not None:
                raise self.fail_batch_with
        return [ValueError(f"refused {item}") if item in self.fail_items else item * 10
                for item in items]


def queue_behind_first(group: GroupCommit, recorder: Recorder, first: int,
                       behind: list[int]) -> dict:
    """Submit `first`, then `behind` while the first batch is running; collect outcomes."""
    outcomes: dict = {}

    def submit(item: int) -> None:
        try:
            outcomes[item] = group.submit(item)
        except BaseException as exc:  # noqa: BLE001 — the outcome under test
            outcomes[item] = exc

    with ThreadPoolExecutor(max_workers=len(behind) + 1) as pool:
        pool.submit(submit, first)
        assert recorder.first_started.wait(10)
        for item in behind:
            pool.submit(submit, item)
        wait_until(lambda: len(group._queue) == len(behind), interval=0.01,
                   message="every item queued behind the running batch")
        recorder.release_first.set()
    return outcomes


def test_a_lone_item_runs_at_once_in_a_batch_of_its_own():
    batches = []
    group = GroupCommit(lambda items: batches.append(items) or [i + 1 for i in items], 8)
    assert group.submit(1) == 2
    assert group.submit(5) == 6
    assert batches == [[1], [5]]


def test_items_arriving_during_a_batch_share_the_next_and_each_gets_its_own_outcome():
    recorder = Recorder(fail_items=frozenset({3}))
    group = GroupCommit(recorder, 8)
    outcomes = queue_behind_first(group, recorder, 1, [2, 3, 4])
    assert recorder.batches[0] == [1]
    assert sorted(recorder.batches[1]) == [2, 3, 4] and len(recorder.batches) == 2
    assert outcomes[1] == 10 and outcomes[2] == 20 and outcomes[4] == 40
    assert isinstance(outcomes[3], ValueError) and str(outcomes[3]) == "refused 3"


def test_a_batch_is_never_larger_than_the_limit():
    recorder = Recorder()
    group = GroupCommit(recorder, 2)
    outcomes = queue_behind_first(group, recorder, 0, [1, 2, 3, 4, 5])
    assert [len(batch) for batch in recorder.batches] == [1, 2, 2, 1]
    assert outcomes == {item: item * 10 for item in range(6)}


def test_a_failed_batch_fails_its_items_only_and_the_queue_goes_on():
    recorder = Recorder(fail_batch_with=ConnectionError("database unavailable"))
    group = GroupCommit(recorder, 8)
    outcomes = queue_behind_first(group, recorder, 1, [2, 3])
    assert isinstance(outcomes[1], ConnectionError)
    assert outcomes[2] == 20 and outcomes[3] == 30
    assert group.submit(7) == 70  # nobody is left holding the lead


def test_an_interrupted_leader_leaves_no_follower_waiting():
    """Not an Exception (a worker being stopped raises SystemExit in the leading thread):
    its batch still gets an answer and the lead passes on."""
    recorder = Recorder(fail_batch_with=SystemExit(1))
    group = GroupCommit(recorder, 1)
    outcomes = queue_behind_first(group, recorder, 1, [2])
    assert isinstance(outcomes[1], SystemExit)
    assert outcomes[2] == 20


def test_many_threads_each_get_their_own_result():
    group = GroupCommit(lambda items: [("done", item) for item in items], 16)
    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(group.submit, range(500)))
    assert results == [("done", item) for item in range(500)]


@pytest.mark.parametrize("size", [1, 3])
def test_a_wrong_number_of_outcomes_fails_the_batch(size):
    group = GroupCommit(lambda items: [1] * (len(items) + size), 8)
    with pytest.raises(ValueError):
        group.submit(1)


def test_then_runs_after_the_followers_are_answered_and_before_the_next_batch():
    """The outbox answers a callback once it is committed and announces the batch after:
    the followers must not wait for `then`, the next batch must."""
    recorder = Recorder()
    then_started, release_then = threading.Event(), threading.Event()
    seen: list[list] = []

    def then(outcomes):
        seen.append(sorted(outcomes))
        if len(seen) == 2:  # the batch of the two items queued behind the first
            then_started.set()
            assert release_then.wait(10)

    group = GroupCommit(recorder, 8, then=then)
    with ThreadPoolExecutor(max_workers=4) as pool:
        first = pool.submit(group.submit, 1)
        assert recorder.first_started.wait(10)
        behind = [pool.submit(group.submit, item) for item in (2, 3)]
        wait_until(lambda: len(group._queue) == 2, interval=0.01, message="two queued")
        recorder.release_first.set()
        assert then_started.wait(10)
        # the second batch's leader is in `then`; its follower has its answer already
        wait_until(lambda: sum(future.done() for future in behind) == 1, interval=0.01,
                   message="the follower answered")
        late = pool.submit(group.submit, 4)
        wait_until(lambda: len(group._queue) == 1, interval=0.01, message="4 queued")
        assert len(recorder.batches) == 2 and not late.done()  # waits for `then`
        release_then.set()
        assert late.result(timeout=10) == 40
        assert [first.result(), *(future.result() for future in behind)] == [10, 20, 30]
    assert seen == [[10], [20, 30], [40]]


def test_then_is_skipped_for_a_failed_batch_and_what_it_raises_reaches_its_leader_only():
    recorder = Recorder(fail_batch_with=ConnectionError("database unavailable"))
    seen: list[list] = []

    def then(outcomes):
        seen.append(sorted(outcomes))
        raise RuntimeError("announcement failed")

    group = GroupCommit(recorder, 8, then=then)
    outcomes = queue_behind_first(group, recorder, 1, [2, 3])
    assert isinstance(outcomes[1], ConnectionError)
    assert seen == [[20, 30]]  # not called for the failed first batch
    raised = {item for item in (2, 3) if isinstance(outcomes[item], RuntimeError)}
    assert len(raised) == 1  # the second batch's leader; its follower has its result
    assert {outcomes[item] for item in {2, 3} - raised} <= {20, 30}
    with pytest.raises(RuntimeError):
        group.submit(7)  # the lead passed on: a new batch runs (and its `then` raises)
    assert recorder.batches[-1] == [7]
