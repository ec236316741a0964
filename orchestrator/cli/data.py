"""``ambient data``: generate benchmark datasets, import LeRobot / zarr ones, check a dataset."""

from __future__ import annotations

import click

from orchestrator.cli._app import common, main, print_json

#: ``--out`` of generate and import: resolved like every data location (``resolve_location``).
OUT_HELP = (
    "Where to write: s3://bucket/prefix, an absolute path, or a path under the storage root "
    "(--storage; default AMBIENT_HOME, .ambient), like every data location."
)


@main.group()
def data() -> None:
    """Create and check datasets (local directory or s3:// prefix).

    Low-dim data is written as Parquet shards + meta.json; data with cameras as a LeRobot v3
    dataset (Parquet + one MP4 per camera), which every command reads in place.
    """


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
@click.option("--out", required=True, help=OUT_HELP)
@click.option("--seed", type=int, default=0, show_default=True)
def data_generate(task: str, n_clean: int, n_corrupt: int, out: str, seed: int) -> None:
    """Write OUT/clean and OUT/corrupt datasets for TASK and print timings and digests."""
    from ambient_platform.settings import resolve_location
    from jobs.generate import generate

    print_json(generate(task.replace("-", "_"), n_clean, n_corrupt, resolve_location(out), seed))


@data.command("import")
@common
@click.argument("fmt", type=click.Choice(["lerobot", "zarr"]))
@click.argument("path", type=click.Path(exists=True))
@click.option("--out", required=True, help=OUT_HELP)
@click.option(
    "--map",
    "mapping",
    multiple=True,
    metavar="OURS=THEIRS",
    help="Feature mapping, e.g. --map observation.goal=target; 'action=' drops one.",
)
@click.option(
    "--source",
    help="Dataset name (default: from PATH; an output with cameras, LeRobot v3, is named "
    "after --out and records --source in meta/ambient_import.json).",
)
@click.option("--task", default="imported", show_default=True)
@click.option(
    "--fps",
    type=float,
    help="Frame rate (zarr stores none: default 10; LeRobot: info.json's). Whole numbers "
    "when there are cameras.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset at --out.")
@click.option(
    "--low-dim-only",
    is_flag=True,
    help="Import the low-dim columns alone and skip the cameras (output: Parquet shards).",
)
def data_import(
    fmt: str,
    path: str,
    out: str,
    mapping: tuple[str, ...],
    source: str | None,
    task: str,
    fps: float | None,
    overwrite: bool,
    low_dim_only: bool,
) -> None:
    """Import a LeRobot v2/v3 dataset or a diffusion_policy zarr replay buffer from PATH.

    Cameras are kept. zarr: every (N, H, W, 3) uint8 array under data/ (img, camera_0, ...)
    becomes camera observation.images.<key> (rename or drop with --map), and the output is a
    LeRobot v3 dataset with one MP4 per camera; a buffer without cameras gives Parquet shards
    + meta.json as before. LeRobot v2.x: videos and image features are kept (output LeRobot
    v3). LeRobot v3 with cameras is not imported: use PATH directly as a dataset path (it is
    read in place), or pass --low-dim-only to import its low-dim columns alone.
    """
    from ambient_platform.settings import resolve_location
    from jobs.import_zarr import import_zarr
    from jobs.importers import import_lerobot, parse_mapping

    feats = parse_mapping(list(mapping))
    out = resolve_location(out)
    if fmt == "lerobot":
        res = import_lerobot(path, out, feats, source, task, fps, overwrite, low_dim_only)
    else:
        res = import_zarr(path, out, feats, source, task, fps or 10.0, overwrite, low_dim_only)
    print_json(res)


@data.command("check")
@common
@click.argument("path")
@click.option(
    "--no-decode",
    is_flag=True,
    help="Check metadata and low-dim columns only; do not decode camera frames.",
)
def data_check(path: str, no_decode: bool) -> None:
    """Validate the dataset at PATH (ours or LeRobot v3; s3://, absolute, or under the storage
    root) and print a summary.

    Reads every low-dim column and decodes every frame of every camera (MP4 videos and
    encoded images in Parquet alike); a problem is one error line naming the dataset,
    episode, camera and row.
    """
    from ambient_platform.settings import resolve_location
    from jobs.pixel_data import check_dataset

    print_json(check_dataset(resolve_location(path), decode=not no_decode))
