"""The ORM-free trial read gives exactly the trials Optuna's own read gives (optsearch/search/trial_read.py)."""

from __future__ import annotations

import math
import time

import optuna
import pytest
import sqlalchemy
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from optsearch.search.storage import open_storage
from optsearch.search.trial_read import TrialReadStorage

optuna.logging.set_verbosity(optuna.logging.WARNING)

DISTS = {"f": FloatDistribution(-1.0, 1.0), "lf": FloatDistribution(1e-5, 1.0, log=True),
         "sf": FloatDistribution(0.0, 1.0, step=0.25), "i": IntDistribution(0, 9), "li": IntDistribution(1, 64, log=True),
         "c": CategoricalDistribution((None, True, "adam", 2.5))}


def _fields(t: optuna.trial.FrozenTrial) -> dict:
    """Every field of a trial, dicts as item lists so their order counts too."""
    return {k: (list(v.items()) if isinstance(v, dict) else v) for k, v in vars(t).items()}


def _same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        fx, fy = _fields(x), _fields(y)
        for k in fx:  # NaN intermediate values: equal when both are NaN
            if k.lstrip("_") == "intermediate_values":
                assert [(s, repr(v)) for s, v in fx[k]] == [(s, repr(v)) for s, v in fy[k]]
            else:
                assert fx[k] == fy[k], (x.number, k)


def _fill(study: optuna.Study) -> None:
    storage = study._storage
    for i in range(4):
        params = {"f": -0.5 + 0.3 * i, "lf": 10.0 ** -i, "sf": 0.25 * i, "i": i, "li": 2 ** i,
                  "c": (None, True, "adam", 2.5)[i]}
        study.add_trial(create_trial(params=params, distributions=DISTS, values=[0.1 * i, float(i)],
                                     user_attrs={"list": [i, "x"], "dict": {"k": i}, "s": "v", "n": None, "f": 1.5},
                                     system_attrs={"GeneticSampler:generation": i, "parents": [i - 1, i - 2]},
                                     intermediate_values={0: 0.5, 1: math.nan, 2: math.inf, 3: -math.inf}))
    study.add_trial(create_trial(params={"f": 0.0}, distributions={"f": DISTS["f"]}, values=[math.inf, -math.inf]))
    study.add_trial(create_trial(params={"i": 3}, distributions={"i": DISTS["i"]}, state=TrialState.PRUNED,
                                 intermediate_values={5: 0.25}))
    study.add_trial(create_trial(params={"c": "adam"}, distributions={"c": DISTS["c"]}, state=TrialState.FAIL))
    running = study.ask({"f": DISTS["f"]})  # RUNNING, with a user attr and a system attr set afterwards
    running.set_user_attr("z_last", 1)
    running.set_user_attr("a_first", [1, 2])
    storage.set_trial_system_attr(running._trial_id, "optsearch:pid", 123)
    study.enqueue_trial({"f": 0.25})  # WAITING


@pytest.fixture
def url(tmp_path, monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # not UTC: the stored naive UTC times must come back as local times
    time.tzset()
    yield f"sqlite:///{tmp_path / 'read.db'}"
    monkeypatch.delenv("TZ")
    time.tzset()


def test_every_field_of_every_trial_is_what_optunas_read_gives(url):
    study = optuna.create_study(study_name="s", storage=TrialReadStorage(url), directions=["maximize", "minimize"])
    _fill(study)
    orm = optuna.storages.RDBStorage(url)
    sid = orm.get_study_id_from_name("s")
    for states in (None, (TrialState.COMPLETE,), (TrialState.RUNNING, TrialState.WAITING)):
        ours = TrialReadStorage(url)._get_trials(sid, states, set(), -1)
        _same(ours, orm._get_trials(sid, states, set(), -1))
        assert ours and all(states is None or t.state in states for t in ours)
    first = orm._get_trials(sid, None, set(), -1)
    assert first[1].datetime_start is not None and first[1].distributions["c"] == DISTS["c"]
    # the incremental read Optuna's cache makes: the unfinished trials plus those after the last finished one
    running = [t._trial_id for t in first if not t.state.is_finished()]
    last = max(t._trial_id for t in first if t.state.is_finished())
    assert running
    _same(TrialReadStorage(url)._get_trials(sid, None, set(running), last), orm._get_trials(sid, None, set(running), last))


def test_a_study_read_through_optunas_cache_follows_new_and_finishing_trials(url):
    study = optuna.create_study(study_name="s", storage=TrialReadStorage(url), directions=["maximize", "minimize"])
    _fill(study)
    assert len(study.get_trials()) == 9  # fills the cache; the RUNNING and WAITING trials stay unfinished in it
    running = next(t for t in study.get_trials() if t.state == TrialState.RUNNING)
    study.tell(running.number, [1.0, 2.0])
    study.add_trial(create_trial(params={"f": 0.5}, distributions={"f": DISTS["f"]}, values=[0.0, 0.0]))
    _same(study.get_trials(), optuna.load_study(study_name="s", storage=optuna.storages.RDBStorage(url)).get_trials())


def test_a_refused_query_falls_back_to_optunas_read_and_a_missing_study_is_optunas_error(url, monkeypatch):
    study = optuna.create_study(study_name="s", storage=TrialReadStorage(url), directions=["maximize", "minimize"])
    _fill(study)
    storage = TrialReadStorage(url)

    def refuse(conn, where):
        raise sqlalchemy.exc.OperationalError("SELECT …", {}, Exception("too many SQL variables"))

    monkeypatch.setattr(TrialReadStorage, "_read", staticmethod(refuse))
    _same(storage._get_trials(study._study_id, None, set(), -1),
          optuna.storages.RDBStorage(url)._get_trials(study._study_id, None, set(), -1))
    with pytest.raises(KeyError):
        storage._get_trials(study._study_id + 99, None, set(), -1)


def test_sqlite_and_server_urls_open_the_orm_free_storage(tmp_path):
    assert isinstance(open_storage(f"sqlite:///{tmp_path / 'x.db'}"), TrialReadStorage)
