"""``ambient data``: generate benchmark datasets and import LeRobot / zarr ones."""

from __future__ import annotations

import click

from orchestrator.cli._app import common, main, print_json


@main.group()
def data() -> None:
    """Create datasets (Parquet shards + meta.json, local directory or s3:// prefix)."""


@data.command("generate")
@common
@click.argument("task", type=click.Choice(["maze", "bin-sorting", "bin-sorting-pixels"]))
@click.option(
    "--clean",
    "n_clean",
    type=click.IntRange(1),
    default=50,
    show_default=True,
    help="Clean demonstrations (GCS-like plans / correct sorting logic).",
)
@click.option(
    "--corrupt",
    "n_corrupt",
    type=click.IntRange(0),
    default=5000,
    show_default=True,
    help="Corrupt demonstrations (RRT plans / opposite sorting logic).",
)
@click.option("--out", required=True, help="Output directory or s3://bucket/prefix.")
@click.option("--seed", type=int, default=0, show_default=True)
def data_generate(task: str, n_clean: int, n_corrupt: int, out: str, seed: int) -> None:
    """Write OUT/clean and OUT/corrupt datasets for TASK and print timings and digests."""
    from jobs.generate import generate

    print_json(generate(task.replace("-", "_"), n_clean, n_corrupt, out, seed))


@data.command("import")
@common
@click.argument("fmt", type=click.Choice(["lerobot", "zarr"]))
@click.argument("path", type=click.Path(exists=True))
@click.option("--out", required=True, help="Output directory or s3://bucket/prefix.")
@click.option(
    "--map",
    "mapping",
    multiple=True,
    metavar="OURS=THEIRS",
    help="Feature mapping, e.g. --map observation.goal=target; 'action=' drops one.",
)
@click.option("--source", help="Dataset name (default: from PATH).")
@click.option("--task", default="imported", show_default=True)
@click.option("--fps", type=float, help="Frame rate (zarr stores none; LeRobot's info.json).")
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset at --out.")
def data_import(
    fmt: str,
    path: str,
    out: str,
    mapping: tuple[str, ...],
    source: str | None,
    task: str,
    fps: float | None,
    overwrite: bool,
) -> None:
    """Import a LeRobot v2/v3 dataset or a diffusion_policy zarr replay buffer from PATH."""
    from jobs.importers import import_lerobot, import_zarr, parse_mapping

    feats = parse_mapping(list(mapping))
    if fmt == "lerobot":
        res = import_lerobot(path, out, feats, source, task, fps, overwrite)
    else:
        res = import_zarr(path, out, feats, source, task, fps or 10.0, overwrite)
    print_json(res)
