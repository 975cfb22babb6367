"""The MLflow Model Registry: a run's logged uint8 model as a version of ``<model>-<dataset>``.

Each version carries tags ``method``, ``kind``, ``level``, ``first_n``, ``test_error`` (on its
own distortion, %), ``clean_error`` and ``source_run``; aliases name what a version is for:
``clean`` (the pre-train), ``<kind>-L<level>`` (``defocus-L2``, ``defocus-L2_5``), and
``<kind>-U<a>-<b>`` for a range (``combined-U0-4``). Registering a run twice returns its version.
A run without a logged model (a sweep's cells) gets one first, from its ``best.ckpt`` artifact.
"""

from __future__ import annotations

from dataclasses import dataclass

MODEL_ARTIFACT = "model"


@dataclass
class Registered:
    name: str
    version: str
    alias: str | None
    created: bool
    tags: dict[str, str]


def alias_for(kind: str, level: str) -> str:
    """``clean``, ``defocus-L2``, ``defocus-L2_5`` or ``combined-U0-4`` (aliases take no dots)."""
    from robust_ft.levels import is_clean_level, level_tag

    if kind == "clean" or is_clean_level(level):
        return "clean"
    tag = level_tag(level)
    return f"{kind}-{tag[1:] if tag.startswith('LU') else tag}".replace(".", "_")


def version_tags(run) -> dict[str, str]:
    """What a registered version is: the source run's method, distortion and errors."""
    from robust_ft.levels import level_tag

    t, m = run.data.tags, run.data.metrics
    kind = t.get("distortion", "clean")
    level = level_tag(t.get("level", "0"))  # as the run's tag and metric keys: L2, LU0-4
    own = m.get(f"test/err/{kind}/{level}") if kind != "clean" else None
    clean = m.get("test/err/clean/L0")
    tags = {"method": t.get("method", "?"), "kind": kind, "level": level,
            "first_n": t.get("first_n", "?"), "source_run": run.info.run_id}  # fmt: skip
    if own is not None or clean is not None:
        tags["test_error"] = f"{own if own is not None else clean:.3f}"
    if clean is not None:
        tags["clean_error"] = f"{clean:.3f}"
    return tags


def register_run(run_id: str, uri: str | None = None, alias: bool = True) -> Registered:
    """Register ``run_id``'s model as a version of ``<model>-<dataset>``; set its alias."""
    from robust_ft.tracking import client, default_tracking_uri, existing_run

    uri = uri or default_tracking_uri()
    c = client(uri)
    run = existing_run(run_id, c, missing="check the id given to --run")
    t = run.data.tags
    if run.info.status != "FINISHED" or "model" not in t or "dataset" not in t:
        raise ValueError(
            f"run {run_id} is {run.info.status} or not a robust-ft training run (no model/dataset "
            "tags); register a FINISHED run of `robust-ft fit`, a sweep or the demo"
        )
    name = f"{t['model']}-{t['dataset']}"
    tags = version_tags(run)
    version, created = _version_of(c, name, run_id), False
    if version is None:
        model_id = logged_model_id(c, run, uri)
        if not c.search_registered_models(f"name = '{name}'"):
            c.create_registered_model(
                name, description=f"{t['model']} on {t['dataset']} (robust-ft)"
            )
        version = c.create_model_version(
            name, f"models:/{model_id}", run_id=run_id, tags=tags, model_id=model_id
        ).version
        created = True
    label = alias_for(tags["kind"], tags["level"]) if alias else None
    if label:
        c.set_registered_model_alias(name, label, version)
    return Registered(name, str(version), label, created, tags)


def _version_of(c, name: str, run_id: str) -> str | None:
    """The version of ``name`` already registered from ``run_id`` (None: not yet)."""
    found = c.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return str(min(int(v.version) for v in found)) if found else None


def logged_model_id(c, run, uri: str) -> str:
    """The id of the run's logged ``model``; logged now from its best checkpoint when missing."""
    found = _find_logged(c, run)
    if found is None:
        _log_from_checkpoint(run, uri)
        found = _find_logged(c, run)
    if found is None:
        raise ValueError(f"run {run.info.run_id} has no logged model and none could be logged")
    return found


def _find_logged(c, run) -> str | None:
    rid = run.info.run_id
    models = c.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{rid}'"
    )
    named = [m for m in models if m.name == MODEL_ARTIFACT]
    return named[0].model_id if named else None


def _log_from_checkpoint(run, uri: str) -> None:
    """Log the run's network (its ``checkpoints/best.ckpt``) as the run's uint8 model."""
    import tempfile

    from robust_ft.checkpoints import load_net_weights
    from robust_ft.models import build
    from robust_ft.tracking import log_network, resolve_checkpoint

    t, params = run.data.tags, run.data.params
    with tempfile.TemporaryDirectory() as d:
        exp = run.info.experiment_id
        path, _ = resolve_checkpoint(run.info.run_id, exp, dest=d, uri=uri)
        net = build(t["model"], num_classes=int(params.get("model.num_classes", 10)))
        load_net_weights(net, path)
    mean, std = dataset_moments(t["dataset"], net.input_shape[0], params)
    log_network(run.info.run_id, net, mean, std, uri)


def dataset_moments(dataset: str, channels: int, params: dict) -> tuple[tuple, tuple]:
    """The mean/std a run's DataModule normalised with (what its logged model must do too)."""
    from robust_ft.data.sources import INFO

    if dataset in INFO:
        return INFO[dataset].mean, INFO[dataset].std
    if dataset == "synthetic":
        return (0.5,) * channels, (0.25,) * channels
    return INFO["imagenet"].mean, INFO["imagenet"].std  # ImageFolder trees


def register_sweep(sweep: str, advised: bool, tolerance: float, uri: str | None = None) -> list:
    """Register a sweep's models: its pre-train as ``clean`` and, with ``advised``, for every
    (kind, level) the run of the method ``advise`` picks under its alias; else every trained
    cell (no alias but ``clean``)."""
    from robust_ft.deploy.advise import advise
    from robust_ft.levels import level_text
    from robust_ft.report import fetch_runs, find_sweep, records
    from robust_ft.tracking import client, default_tracking_uri

    uri = uri or default_tracking_uri()
    c = client(uri)
    runs = {r.info.run_id: r for r in fetch_runs(c, parent=find_sweep(c, sweep))}
    trained = [r for r in runs.values() if r.data.tags.get("method") != "notrain"]
    pre = [r for r in trained if r.data.tags.get("method") == "pretrain"]
    out = [register_run(r.info.run_id, uri) for r in pre[:1]]
    if not advised:
        rest = [r for r in trained if r not in pre[:1]]
        return out + [register_run(r.info.run_id, uri, alias=False) for r in rest]
    rec = records(list(runs.values()))
    rec = rec[rec.stat == "err"]
    cells = {(r.data.tags["distortion"], level_text(r.data.tags["level"])) for r in trained} - {
        ("clean", "0")
    }
    for kind, level in sorted(cells):
        t = trained[0].data.tags
        a = advise(rec, runs, t["model"], t["dataset"], kind, level, tolerance)
        if a["answer"] is None:
            continue
        run_id = next(r for r in a["evidence"] if r["method"] == a["answer"])["run_ids"][0]
        if a["answer"] == "notrain":  # the clean model itself serves this distortion
            run_id = pre[0].info.run_id if pre else run_id
        reg = register_run(run_id, uri, alias=False)
        reg.alias = alias_for(kind, level)
        c.set_registered_model_alias(reg.name, reg.alias, reg.version)
        out.append(reg)
    return out


def main(argv: list[str] | None = None) -> list[Registered]:
    """`robust-ft register`: one run's model, or a sweep's, into the Model Registry."""
    import argparse

    p = argparse.ArgumentParser(prog="robust-ft register", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="an MLflow run id of a finished training run")
    src.add_argument("--from-sweep", metavar="NAME", help="a sweep's models (see --advise)")
    p.add_argument("--advise", action="store_true",
                   help="per (kind, level) of the sweep, the run of the advised method")  # fmt: skip
    p.add_argument("--tolerance", type=float, default=0.5, help="advise's tolerance (points)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default MLFLOW_TRACKING_URI)")
    a = p.parse_args(argv)
    from robust_ft.tracking import check_reachable, default_tracking_uri

    uri = a.tracking_uri or default_tracking_uri()
    check_reachable(uri)
    if a.run:
        done = [register_run(a.run, uri)]
    else:
        done = register_sweep(a.from_sweep, a.advise, a.tolerance, uri)
    for r in done:
        what = "registered" if r.created else "already registered"
        alias = f" @{r.alias}" if r.alias else ""
        print(f"{what}: models:/{r.name}/{r.version}{alias}  ({r.tags['method']}, {r.tags['kind']} "
              f"{r.tags['level']}, test error {r.tags.get('test_error', '?')}%, run "
              f"{r.tags['source_run']})")  # fmt: skip
    return done
