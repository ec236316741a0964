"""LeRobot v3 datasets, written and read where they live (a directory or ``s3://``).

Layout (LeRobot ``CODEBASE_VERSION = "v3.0"``)::

    meta/info.json                                  fps, features, path templates, counts
    meta/stats.json                                 per-feature min / max / mean / std / count
    meta/tasks.parquet                              task string (index) -> task_index
    meta/episodes/chunk-000/file-000.parquet        one row per episode: length, tasks,
                                                    data/{chunk,file}_index,
                                                    dataset_{from,to}_index, videos/<camera>/
                                                    {chunk,file}_index, {from,to}_timestamp
    data/chunk-000/file-000.parquet                 one row per frame: low-dim features,
                                                    timestamp, frame_index, episode_index, index,
                                                    task_index
    videos/<camera>/chunk-000/file-000.mp4          many episodes per MP4, back to back

A camera may instead be stored as LeRobot does with videos off (``dtype: "image"``): one PNG/JPEG
per frame in a ``{bytes, path}`` struct column of the data files, decoded with Pillow
(``images.py``); ``LeRobotDataset.decode_episode`` reads both kinds the same way.

Frame j of an episode is at ``from_timestamp + j / fps`` in its camera's MP4. Videos are encoded
and decoded in-process with PyAV (libx264, a key frame at every episode start so an episode is
one seek away). Reading never copies the dataset: Parquet and MP4 are read in place (range reads
on S3, through a block cache), and frames are decoded per episode.

Why not ``ray.data.read_lerobot`` (Ray 2.60): it imports ``lerobot.datasets.dataset_metadata`` and
decodes with torchcodec. Every lerobot release with that module needs Python >= 3.12 or
torch < 2.12 (0.4.0: torch < 2.8; 0.5+: Python >= 3.12; 0.6.1: both), and the newest release that
resolves here (0.3.2) is codebase v2.1 without it; we run Python 3.11 with the pinned CPU torch
2.13.0. PyAV is already a dependency and decodes the same files.
"""

from ambient_platform.lerobot.layout import CODEBASE_VERSION, INFO_PATH
from ambient_platform.lerobot.read import EpisodeInfo, LeRobotDataset, VideoSpan, ambient_meta
from ambient_platform.lerobot.write import VideoOptions, write_lerobot

__all__ = [
    "CODEBASE_VERSION",
    "EpisodeInfo",
    "INFO_PATH",
    "LeRobotDataset",
    "VideoOptions",
    "VideoSpan",
    "ambient_meta",
    "write_lerobot",
]
