"""The public surface, pinned: a change to it is a decision, not an accident."""

from __future__ import annotations

import importlib.metadata

import pytest

import rheo_nb

EXPECTED = [
    "ApiKey",
    "BearerToken",
    "Cancelled",
    "ClientFactory",
    "Completed",
    "DestinationError",
    "DigestAuth",
    "Display",
    "DownloadError",
    "DownloadInfo",
    "DownloadManager",
    "DownloadsFailed",
    "Event",
    "EventType",
    "ExtractError",
    "Extracting",
    "Failed",
    "File",
    "HTTPStatusError",
    "IntegrityError",
    "InvalidItemError",
    "Job",
    "ManifestError",
    "NotebookProgress",
    "OAuth2ClientCredentials",
    "OptionError",
    "ObjectPath",
    "Options",
    "Outcome",
    "Progress",
    "Queued",
    "RedirectError",
    "Restarted",
    "Results",
    "Retrying",
    "RheoNbError",
    "Skipped",
    "Started",
    "Stats",
    "Status",
    "Subscription",
    "TextProgress",
    "Throttled",
    "TooLargeError",
    "TransferError",
    "Validating",
    "__version__",
    "clean",
    "fetch",
    "fetch_sync",
    "read_manifest",
    "start",
]


def test_all_is_pinned() -> None:
    assert sorted(rheo_nb.__all__) == sorted(EXPECTED)


@pytest.mark.parametrize("name", EXPECTED)
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(rheo_nb, name) is not None


def test_unknown_names_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        rheo_nb.nope  # noqa: B018


def test_version_matches_the_package_metadata() -> None:
    assert rheo_nb.__version__ == importlib.metadata.version("rheo_nb")


def test_every_public_exception_derives_from_the_root() -> None:
    objects = [getattr(rheo_nb, n) for n in EXPECTED]
    errors = [o for o in objects if isinstance(o, type) and issubclass(o, BaseException)]
    assert rheo_nb.DownloadsFailed in errors
    assert rheo_nb.TransferError in errors
    assert all(issubclass(e, rheo_nb.RheoNbError) for e in errors)
