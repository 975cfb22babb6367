"""The router: one served model that sends each image to the fine-tune made for its distortion.

``build-router`` registers ``<model>-<dataset>-router`` (alias ``current``), an MLflow pyfunc
model that takes raw uint8 images (N,C,H,W) of any batch size, estimates each image's distortion
with ``distortion-estimator@fashion_mnist``, and runs it through the registered version of
``<model>-<dataset>`` whose alias is the nearest level of the estimated kind (``defocus-L2``,
...; ``clean`` when the image looks clean or no version was made for its kind). It answers a
table: ``class``, ``probabilities`` (one list per image) and ``route`` (the alias used).
Every model it uses is copied into the router's own artifacts: serving needs no tracking store.
"""

from __future__ import annotations

import re

ALIAS_RE = re.compile(r"^(motion|defocus|noise|combined)-L(\d+(?:_\d+)?)$")
ROUTER_ALIAS = "current"


def routes_of(aliases) -> dict[str, tuple[str, float]]:
    """Aliases a router can use -> (kind, level): ``clean`` and ``<kind>-L<level>``; ranges
    (``combined-U0-4``) are not a level to be nearest to and are left out."""
    out = {}
    for alias in aliases:
        if alias == "clean":
            out[alias] = ("clean", 0.0)
        elif m := ALIAS_RE.match(alias):
            out[alias] = (m[1], float(m[2].replace("_", ".")))
    return out


def choose(routes: dict[str, tuple[str, float]], kind: str, level: float) -> str:
    """The alias for an image estimated as (kind, level): the nearest level of that kind."""
    same = [(abs(lv - level), a) for a, (k, lv) in routes.items() if k == kind]
    return min(same)[1] if kind != "clean" and same else "clean"


def build_router(model: str, dataset: str, uri: str) -> tuple[str, str, dict]:
    """Log and register ``<model>-<dataset>-router`` from the registered versions; (name,
    version, routes)."""
    import mlflow
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from robust_ft.console import warnings_off, without_log_lines
    from robust_ft.deploy.estimate import ALIAS as EST_ALIAS
    from robust_ft.deploy.estimate import NAME as EST_NAME
    from robust_ft.deploy.estimate import load as load_estimator
    from robust_ft.models import input_shape
    from robust_ft.tracking import active_run, client, tracked_run

    c, name = client(uri), f"{model}-{dataset}"
    load_estimator(uri)  # a clear error when there is none
    found = c.search_registered_models(f"name = '{name}'")
    routes = routes_of(found[0].aliases if found else {})
    if "clean" not in routes:
        raise ValueError(
            f"no version of {name} has the alias 'clean'; register the clean model first: "
            f"`robust-ft register --run <pre-train run id>` or `robust-ft register --from-sweep "
            "<name> --advise`"
        )
    artifacts = {a: f"models:/{name}@{a}" for a in routes}
    artifacts["estimator"] = f"models:/{EST_NAME}@{EST_ALIAS}"
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, *input_shape(model)))])
    )
    tags = {"method": "router", "model": model, "dataset": dataset}
    # a pickled PythonModel of robust-ft's own: MLflow's notes about that are no news here
    from robust_ft.deploy.router_model import Router

    with (
        tracked_run(name, run_name="router", tags=tags, uri=uri) as run,
        active_run(run.run_id, uri),
        warnings_off(),
        without_log_lines("mlflow.pyfunc", "Passing a Python object"),
    ):
        info = mlflow.pyfunc.log_model(
            name="router", python_model=Router(), artifacts=artifacts,
            model_config={"routes": routes}, signature=signature,
        )  # fmt: skip
    return name + "-router", _register(c, name + "-router", info.model_id, run.run_id), routes


def _register(c, name: str, model_id: str, run_id: str) -> str:
    if not c.search_registered_models(f"name = '{name}'"):
        c.create_registered_model(name, description="robust-ft router: estimate, then route")
    v = c.create_model_version(name, f"models:/{model_id}", run_id=run_id, model_id=model_id)
    c.set_registered_model_alias(name, ROUTER_ALIAS, v.version)
    return str(v.version)


def main(argv: list[str] | None = None) -> tuple[str, str, dict]:
    """`robust-ft build-router`."""
    import argparse

    from robust_ft.tracking import check_reachable, default_tracking_uri

    p = argparse.ArgumentParser(prog="robust-ft build-router", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="e.g. lenet5")
    p.add_argument("--dataset", required=True, help="e.g. fashion_mnist")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default MLFLOW_TRACKING_URI)")
    a = p.parse_args(argv)
    uri = a.tracking_uri or default_tracking_uri()
    check_reachable(uri)
    name, version, routes = build_router(a.model, a.dataset, uri)
    print(
        f"registered models:/{name}/{version} @{ROUTER_ALIAS}, routes: {', '.join(sorted(routes))}"
    )
    print(f"serve it: mlflow models serve -m 'models:/{name}@{ROUTER_ALIAS}' --env-manager local "
          "-h 127.0.0.1 -p 5001")  # fmt: skip
    return name, version, routes
