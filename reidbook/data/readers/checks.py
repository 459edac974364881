"""Sanity checks on a read dataset that explain what is wrong instead of failing later in evaluation."""

from __future__ import annotations

from ..records import DatasetLayoutError, Record, ReIDDataset

MAX_LISTED = 10


def queries_without_cross_camera_match(query: list[Record], gallery: list[Record]) -> list[Record]:
    """Queries with no gallery image of the same identity taken by another camera.

    The standard protocol (Market-1501, torchreid) discards same-identity same-camera gallery images,
    so such a query has nothing left to find and cannot be scored.
    """
    cameras_of_pid: dict[int, set[int]] = {}
    for record in gallery:
        cameras_of_pid.setdefault(record.pid, set()).add(record.camid)
    return [q for q in query if not cameras_of_pid.get(q.pid, set()) - {q.camid}]


def check_cross_camera_matches(dataset: ReIDDataset) -> None:
    """Raise :class:`DatasetLayoutError` listing (some of) the queries without a cross-camera match."""
    unmatched = queries_without_cross_camera_match(dataset.query, dataset.gallery)
    if not unmatched:
        return
    listed = "\n".join(f"  {q.path} (pid {q.pid}, camera {q.camid})" for q in unmatched[:MAX_LISTED])
    more = f"\n  ... and {len(unmatched) - MAX_LISTED} more" if len(unmatched) > MAX_LISTED else ""
    raise DatasetLayoutError(
        f"{dataset.name} at {dataset.root}: {len(unmatched)} of {len(dataset.query)} queries have no gallery "
        "image of the same identity from another camera, so cross-camera evaluation cannot score them "
        f"(is a gallery folder incomplete, or are query and gallery folders swapped?):\n{listed}{more}"
    )
