"""The ledger's contract, through its public API: what a plan counts, which record speaks for
a key, queue claims, heartbeats, and the SQL fast paths held equal to Optuna's API."""
import time
from datetime import timedelta

import optuna
import pytest
from optuna.trial import TrialState

from bench import spec
from bench.study.ledger import Ledger
from bench.study.queries import DONE, GenericQueries, Queries
from bench.study.storage import default_url


def fresh(tmp_path, sweep_file, url=None, heartbeat=(30, 120), name="tiny"):
    """A bound ledger for the tiny sweep (its own study name on a shared server)."""
    sweep = spec.load(sweep_file)
    if name != "tiny":
        sweep = spec.load(sweep_file, {"name": name})
    if url is None:
        url = default_url(tmp_path / "results", sweep.name)
        (tmp_path / "results" / sweep.name).mkdir(parents=True, exist_ok=True)  # a run makes its results folder
    lg = Ledger.open(url, sweep.name, create=True, heartbeat=heartbeat)
    lg.bind(sweep)
    return lg, sweep


def start(lg, trial):
    """A running trial of ``trial`` in this worker, as a search makes one: asked, then signed."""
    handle = lg.ask()
    lg.adopt(handle, trial)
    return handle


def finish_complete(lg, handle, top1=50.0):
    lg.finish(handle, {"status": "complete", "top1": top1, "seed": 0}, "top1")


def test_a_later_failure_never_hides_a_result(sweep_file, tmp_path):
    lg, sweep = fresh(tmp_path, sweep_file)
    trial = sweep.trials()[0]
    finish_complete(lg, start(lg, trial))
    handle = start(lg, trial)  # say, a second worker's duplicate that ran out of memory
    lg.finish(handle, {"status": "failed", "error": "out of memory", "seed": 0}, "top1")
    assert lg.plan([trial]).done == 1
    assert [r["status"] for r in lg.records() if r["key"] == trial.key] == ["complete"]


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial):
        return True


@pytest.mark.parametrize("workers", [1, 2])  # SQLite, a journal file
@pytest.mark.parametrize("directions", [["maximize"], ["maximize", "minimize"]])
def test_every_trial_reports_its_epochs_and_only_a_pruned_one_asks(directions, workers, sweep_file, tmp_path):
    # a search's default objectives (top1, gmacs) make a two-objective study, whose trials
    # Optuna's Trial.report refuses: the ledger writes their values through the storage
    url = default_url(tmp_path / "results", "curves", workers)
    (tmp_path / "results" / "curves").mkdir(parents=True)
    lg = Ledger.open(url, "curves", create=True, direction=directions if len(directions) > 1 else directions[0])
    lg = lg.with_sampler(optuna.samplers.RandomSampler(seed=0), AlwaysPrune())
    trial = spec.load(sweep_file).trials()[0]
    handle = start(lg, trial)
    assert lg.report(handle, 10.0, 1) is False  # told, not asked: a study without a pruner goes on
    assert lg.report(handle, 12.5, 2, prune=True) is (len(directions) == 1)  # multi-objective: never pruned
    watcher = Ledger.open(url, "curves")  # as optuna-dashboard sees the running trial
    (running,) = watcher.study.get_trials()
    assert running.state == TrialState.RUNNING and running.intermediate_values == {1: 10.0, 2: 12.5}


def test_plan_counts_each_state_once(sweep_file, tmp_path):
    lg, sweep = fresh(tmp_path, sweep_file)
    done, failed, interrupted, queued = sweep.trials()
    finish_complete(lg, start(lg, done))
    lg.finish(start(lg, failed), {"status": "failed", "error": "boom", "seed": 0}, "top1")
    lg.finish(start(lg, interrupted), {"status": "interrupted", "error": "interrupted", "seed": 0}, "top1")
    lg.enqueue([queued])
    plan = lg.plan(sweep.trials())
    assert (plan.done, plan.failed_skipped, plan.interrupted, plan.queued) == (1, 1, 1, 1)
    assert plan.todo == [interrupted]
    assert lg.plan(sweep.trials(), retry_failed=True).todo == [failed, interrupted]
    assert [r["key"] for r in lg.records()] == [done.key, failed.key]  # interrupted: no result


def test_fast_record_query_matches_optuna_api(sweep_file, tmp_path):
    lg, sweep = fresh(tmp_path, sweep_file)
    for i, trial in enumerate(sweep.trials()):
        if i % 2:  # failed first, then redone: two trials for this key, the newest wins
            lg.finish(start(lg, trial), {"status": "failed", "error": "boom", "seed": 0}, "top1")
        h = start(lg, trial)
        h.set_user_attr("collapse", {"similarity": [[float(i)]]})
        finish_complete(lg, h, top1=float(i))
    assert type(lg.queries).__name__ == "RdbQueries" and lg.queries.attrs(("key",))
    fast = lg.records()
    fast_details = lg.details([r["trial"] for r in fast])
    assert len(lg.study.get_trials()) == 6 and len(fast) == 4 and len(fast_details) == 4
    lg.queries = GenericQueries(lg.study)  # the API path
    assert fast == lg.records() and {r["status"] for r in fast} == {"complete"}
    assert fast_details == lg.details([r["trial"] for r in fast])
    assert [fast_details[r["trial"]]["similarity"][0][0] for r in fast] == [r["top1"] for r in fast]


@pytest.mark.parametrize("where", ["sqlite", "postgres"])
def test_a_dead_worker_elsewhere_is_reclaimed_when_its_heartbeat_stops(where, sweep_file, tmp_path, request):
    url = request.getfixturevalue("pg") if where == "postgres" else None
    name = f"hb{time.time_ns()}" if url else "tiny"  # its own study on a shared server
    lg, sweep = fresh(tmp_path, sweep_file, url=url, name=name)  # beats every 30 s, stale after 120 s
    trial = sweep.trials()[0]
    handle = start(lg, trial)
    handle.set_user_attr("worker", "another-machine:123")  # not ours: only its heartbeat tells
    assert lg.plan([trial]).running_elsewhere == 1  # alive while it beats
    lg.heartbeats.stop(Queries.id_of(handle))  # the worker dies (kill -9): no more beats
    again = Ledger.open(url or default_url(tmp_path / "results", name), name, create=True)
    real = again.queries.now
    again.queries.now = lambda: real() + timedelta(seconds=119)  # the database's clock, moved on
    assert again.plan([trial]).running_elsewhere == 1  # silent, but within the grace period
    again.queries.now = lambda: real() + timedelta(seconds=122)
    plan = again.plan([trial])
    assert plan.interrupted == 1 and plan.todo == [trial]


def test_the_claim_check_reads_the_same_holders_in_sql_as_through_the_api(sweep_file, tmp_path):
    lg, sweep = fresh(tmp_path, sweep_file)
    a, b = sweep.trials()[:2]
    lg.enqueue([a, a, b])
    generic = GenericQueries(lg.study)
    assert lg.queries.waiting() == generic.waiting() and len(generic.waiting()) == 3
    assert lg.claim()[1] == a
    assert lg.claim()[1] == b  # the second entry of a was dropped on the way: a is running
    assert lg.claim() is None
    numbers = {Queries.id_of(t): t.number for t in lg.study.get_trials()}
    for key, expected in ((a.key, [0]), (b.key, [2])):
        api = [t.number for t in lg.trials((TrialState.RUNNING, *DONE)) if t.user_attrs.get("key") == key]
        assert sorted(numbers[i] for i in lg.queries.holders(key)) == api == expected
        assert sorted(numbers[i] for i in generic.holders(key)) == api
    states = [(t.state.name, t.user_attrs.get("dropped")) for t in lg.study.get_trials()]
    assert states == [("RUNNING", None), ("FAIL", "duplicate"), ("RUNNING", None)]


def test_a_point_whose_claims_were_all_dropped_is_queued_again(sweep_file, tmp_path):
    """Two workers claim two queue entries of one point at the same moment: each sees the
    other running and steps back (never both run it). The point must still be run."""
    lg, sweep = fresh(tmp_path, sweep_file)
    point = sweep.trials()[0]
    lg.enqueue([point, point])
    first, _ = lg.claim()
    assert lg.claim() is None  # the second entry sees the first running, and drops itself
    first.set_user_attr("dropped", "duplicate")  # the first saw the second in the same instant
    lg.study.tell(first, state=TrialState.FAIL)
    assert lg.plan([point]).todo == [point]  # dropped claims do not speak for the point
    assert lg.known_trials() == [point]


def test_a_torn_journal_tail_is_set_aside_and_the_study_stays_usable(sweep_file, tmp_path, capsys):
    url = f"journal:{tmp_path / 'j' / 'study.journal'}"
    (tmp_path / "j").mkdir()
    lg, sweep = fresh(tmp_path, sweep_file, url=url)
    first, second = sweep.trials()[:2]
    finish_complete(lg, start(lg, first))
    path = tmp_path / "j" / "study.journal"
    whole = path.read_bytes()
    path.write_bytes(whole + whole[-200:-20])  # a write cut off by a full disk: no newline, not JSON
    again = Ledger.open(url, "tiny")  # repaired before anything is appended
    assert "torn" in capsys.readouterr().err and path.read_bytes() == whole
    (side,) = (tmp_path / "j").glob("study.journal.torn-*")
    assert side.read_bytes() == whole[-200:-20]  # kept, never deleted
    finish_complete(again, start(again, second))
    assert len(Ledger.open(url, "tiny").records()) == 2


@pytest.mark.parametrize("how", ["dead pid here", "silent heartbeat elsewhere"])
def test_a_worker_killed_between_its_result_and_closing_its_trial_leaves_it_complete(how, sweep_file, tmp_path):
    """kill -9 after the record is written but before the trial is told: the trial was closed as
    failed with a complete record (the kill-anywhere test on SQLite found it: the point stayed
    FAIL and was never completed). It is closed as its record says, with its values."""
    lg, sweep = fresh(tmp_path, sweep_file)
    trial = sweep.trials()[0]
    handle = start(lg, trial)
    lg.heartbeats.stop(Queries.id_of(handle))
    handle.set_user_attr("record", {"status": "complete", "top1": 37.5, "seed": 0, "key": trial.key})
    handle.set_user_attr("worker", "another-machine:123" if "elsewhere" in how else "localhost-gone:999999")
    if "elsewhere" in how:
        real = lg.queries.now
        lg.queries.now = lambda: real() + timedelta(seconds=300)
    else:
        import socket
        handle.set_user_attr("worker", f"{socket.gethostname()}:999999")  # no such pid
    plan = lg.plan(sweep.trials())
    t = lg.study.get_trials()[0]
    assert t.state == TrialState.COMPLETE and t.value == 37.5
    assert plan.done == 1 and trial not in plan.todo
