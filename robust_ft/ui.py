"""The MLflow UI opens on what a run is for: saved views with the error columns and bar charts.

MLflow's runs table shows no metric column by default, and its only server-side view setting is
the "share view" state, an experiment tag ``mlflow.sharedViewState.<key>`` that the page loads
from ``?viewStateShareKey=<key>``. robust-ft writes one such view per experiment (key
``robust-ft``, kept up to date by every run) and one per sweep: the runs sorted by name, the
method/distortion/level/first_n tags and every ``test/err`` metric as columns, and the chart view
(``&compareRunsMode=CHART``) opening on one bar chart per test set. The test metrics are logged
at step 0 (``RunLogger.log_metrics``), so the bars compare runs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

VIEW_KEY = "robust-ft"
"""The share key of an experiment's own view (a sweep's view uses its sweep key)."""
TAG_COLUMNS = ("method", "distortion", "level", "first_n")
_TAG = "mlflow.sharedViewState."
_SECTION = "robust-ft-test-errors"


def error_metrics(keys: Iterable[str]) -> list[str]:
    """The ``test/err`` metric keys among ``keys``: clean first, then by name."""
    errs = {k for k in keys if k.startswith("test/err/")}
    return sorted(errs, key=lambda k: (not k.startswith("test/err/clean/"), k))


def view_state(
    metrics: list[str], search_filter: str = "", columns: Iterable[str] | None = None
) -> dict:
    """The UI state: ``columns`` (default: the method tags) and ``metrics`` as columns, runs by
    name, a bar chart per metric."""
    if columns is None:
        columns = [f"tags.`{t}`" for t in TAG_COLUMNS]
    charts = [
        {
            "uuid": f"robust-ft-bar-{i}",
            "type": "BAR",
            "runsCountToCompare": 100,
            "metricSectionId": _SECTION,
            "deleted": False,
            "isGenerated": False,
            "metricKey": m,
            "displayName": m,
        }
        for i, m in enumerate(metrics)
    ]
    section = {
        "uuid": _SECTION, "name": "test error (%)", "display": True,
        "isReordered": False, "deleted": False, "isGenerated": False,
    }  # fmt: skip
    return {
        "searchFilter": search_filter,
        "orderByKey": "tags.`mlflow.runName`",
        "orderByAsc": True,
        "selectedColumns": [*columns, *(f"metrics.`{m}`" for m in metrics)],
        "compareRunCharts": charts,
        "compareRunSections": [section],
        "runsHiddenMode": "SHOW_ALL",  # the UI's default shows the first 10 runs only
        "isAccordionReordered": True,
        "hideEmptyCharts": True,
    }


def save_view(
    client, experiment_id: str, key: str, metrics: Iterable[str], search_filter: str = "",
    columns: Iterable[str] | None = None,
) -> str:  # fmt: skip
    """Write the view ``key`` of an experiment with these metrics; its URL fragment."""
    state = view_state(list(metrics), search_filter, columns)
    client.set_experiment_tag(experiment_id, _TAG + key, json.dumps(state))
    return view_fragment(experiment_id, key)


def add_to_view(client, experiment_id: str, metrics: Iterable[str]) -> str:
    """Add a run's error metrics to its experiment's own view (made on first use); the fragment.

    Read-modify-write of one tag: two runs finishing at once may drop a column, which the next
    run of the experiment writes again.
    """
    tags = client.get_experiment(experiment_id).tags
    shown: list[str] = []
    if _TAG + VIEW_KEY in tags:
        with_prefix = json.loads(tags[_TAG + VIEW_KEY]).get("selectedColumns", [])
        shown = [c[len("metrics.`") : -1] for c in with_prefix if c.startswith("metrics.`")]
    wanted = error_metrics([*shown, *metrics])
    if wanted == shown and shown:
        return view_fragment(experiment_id, VIEW_KEY)
    return save_view(client, experiment_id, VIEW_KEY, wanted)


def tune_view(client, experiment_id: str, study: str, param_keys: Iterable[str]) -> str:
    """Save a study's view (its trials, their state, parameters and val/err); the fragment."""
    columns = ["tags.`optuna.state`", *(f"params.`trial.{k}`" for k in param_keys)]
    trials = f"tags.`optuna.study` = '{study}' and attributes.run_name LIKE 'trial-%'"
    return save_view(client, experiment_id, f"tune-{study}", ["val/err"], trials, columns)


def view_fragment(experiment_id: str, key: str = VIEW_KEY, charts: bool = False) -> str:
    """The UI's URL fragment of a saved view (the table, or with ``charts`` the chart view)."""
    mode = "&compareRunsMode=CHART" if charts else ""
    return f"#/experiments/{experiment_id}/runs?viewStateShareKey={key}{mode}"


def open_hint(uri: str, fragment: str) -> str:
    """How to see a view: the command that starts the UI on the store, then the page to open."""
    from robust_ft.tracking import ui_command

    if uri.startswith(("http://", "https://")):
        from robust_ft.tracking import redact

        return f"{redact(uri).rstrip('/')}/{fragment}"
    return f"{ui_command(uri)}, then http://127.0.0.1:5000/{fragment}"
