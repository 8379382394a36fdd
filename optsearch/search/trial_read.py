"""Reading a study's trials from an RDB without the ORM: the same FrozenTrials, a fifth of the time.

Optuna's :class:`~optuna.storages.RDBStorage` builds every trial through SQLAlchemy's ORM: one object per
parameter, value and attribute row (≈ 97,000 on 2,500 genome trials), an identity map and an expire-on-commit
of each, and a distribution parsed from JSON per parameter row although a study has a few dozen distinct ones.
That was 5–7 s of the analysis's 30 s on such a study. :class:`TrialReadStorage` answers the same read with
five plain SELECTs over Optuna's own tables (its models' column definitions, so types and enums are decoded
as Optuna decodes them) and parses each distinct distribution once. Everything else is Optuna's: the cache
in front of it (``_CachedStorage`` asks ``_get_trials`` for the new and unfinished trials only), writes,
heartbeats and schema checks.

It overrides a private method, so it is checked, not assumed: the tests compare its trials with Optuna's own
read field by field (every state, infinite and multi-objective values, NaN intermediate values, local time);
and a database refusing a query (e.g. too many ids in an IN on SQLite) gets Optuna's read instead.
"""

from __future__ import annotations

import datetime
import functools
import json
from typing import Any, Container, Iterable

import sqlalchemy
from optuna import distributions
from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState

_T = models.TrialModel.__table__
_PARAM = models.TrialParamModel.__table__
_VALUE = models.TrialValueModel.__table__
_INTER = models.TrialIntermediateValueModel.__table__
_USER = models.TrialUserAttributeModel.__table__
_SYSTEM = models.TrialSystemAttributeModel.__table__


@functools.lru_cache(maxsize=4096)
def _distribution(text: str) -> distributions.BaseDistribution:
    """One parsed distribution per distinct JSON text (they are immutable, so sharing them is safe)."""
    return distributions.json_to_distribution(text)


@functools.lru_cache(maxsize=65536)
def _scalar_json(text: str) -> Any:
    return json.loads(text)


def _loads(text: str) -> Any:
    """An attribute's value; scalars are parsed once per distinct text, lists and dicts fresh every time
    (a caller may mutate its trial's attrs, and must not change another trial's)."""
    return json.loads(text) if text[:1] in "[{" else _scalar_json(text)


def _local(utc: datetime.datetime | None) -> datetime.datetime | None:
    """Naive UTC as stored → naive local time, as :class:`~optuna.storages._rdb.models.TrialModel` gives it."""
    if utc is None:
        return None
    return utc.replace(tzinfo=datetime.timezone.utc).astimezone().replace(tzinfo=None)


class TrialReadStorage(RDBStorage):
    """An :class:`~optuna.storages.RDBStorage` whose trial read skips the ORM (see the module docstring)."""

    def _get_trials(self, study_id: int, states: Container[TrialState] | None, included_trial_ids: set[int],
                    trial_id_greater_than: int) -> list[FrozenTrial]:
        included = {i for i in included_trial_ids if i <= trial_id_greater_than}
        where = [_T.c.study_id == study_id]
        if states is not None:
            assert isinstance(states, Iterable)
            where.append(_T.c.state.in_(list(states)))
        if included and trial_id_greater_than > -1:
            where.append(sqlalchemy.or_(_T.c.trial_id.in_(included), _T.c.trial_id > trial_id_greater_than))
        elif trial_id_greater_than > -1:
            where.append(_T.c.trial_id > trial_id_greater_than)
        study = models.StudyModel.__table__.c.study_id
        try:
            with self.engine.connect() as conn:  # one transaction, as Optuna's session reads in one
                if conn.execute(sqlalchemy.select(study).where(study == study_id)).first() is not None:
                    return self._read(conn, where)
        except sqlalchemy.exc.OperationalError:
            pass  # e.g. too many ids in an IN on SQLite: Optuna's read has its own way round that
        return super()._get_trials(study_id, states, included_trial_ids, trial_id_greater_than)  # KeyError if no study

    @staticmethod
    def _read(conn: sqlalchemy.Connection, where: list) -> list[FrozenTrial]:
        rows = conn.execute(sqlalchemy.select(_T.c.trial_id, _T.c.number, _T.c.state, _T.c.datetime_start,
                                              _T.c.datetime_complete).where(*where).order_by(_T.c.trial_id)).all()
        if not rows:
            return []
        ids = sqlalchemy.select(_T.c.trial_id).where(*where).scalar_subquery()

        def children(table: sqlalchemy.Table, order: str, *cols: str) -> dict[int, list]:
            """trial id -> its rows of ``table``, in the order Optuna's read gives them on SQLite."""
            out: dict[int, list] = {}
            for r in conn.execute(sqlalchemy.select(table.c.trial_id, *(table.c[c] for c in cols))
                                  .where(table.c.trial_id.in_(ids)).order_by(table.c[order])):
                out.setdefault(r[0], []).append(r[1:])
            return out

        params = children(_PARAM, "param_id", "param_name", "param_value", "distribution_json")
        values = children(_VALUE, "objective", "objective", "value", "value_type")
        inter = children(_INTER, "step", "step", "intermediate_value", "intermediate_value_type")
        user = children(_USER, "key", "key", "value_json")  # by the (trial, key) index, as SQLite answers the ORM
        system = children(_SYSTEM, "key", "key", "value_json")
        to_value = models.TrialValueModel.stored_repr_to_value
        to_inter = models.TrialIntermediateValueModel.stored_repr_to_intermediate_value
        trials = []
        for trial_id, number, state, start, complete in rows:
            vs = values.get(trial_id)
            vals: list[float] | None = None
            if vs:
                vals = [0.0] * len(vs)
                for objective, v, kind in vs:
                    vals[objective] = to_value(v, kind)
            ps = params.get(trial_id, ())
            dists = {name: _distribution(text) for name, _, text in ps}
            trials.append(FrozenTrial(
                number=number, state=state, value=None, values=vals,
                datetime_start=_local(start), datetime_complete=_local(complete),
                params={name: dists[name].to_external_repr(v) for name, v, _ in ps},
                distributions=dists,
                user_attrs={k: _loads(v) for k, v in user.get(trial_id, ())},
                system_attrs={k: _loads(v) for k, v in system.get(trial_id, ())},
                intermediate_values={step: to_inter(v, kind) for step, v, kind in inter.get(trial_id, ())},
                trial_id=trial_id))
        return trials


__all__ = ["TrialReadStorage"]
