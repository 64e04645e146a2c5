"""rheo_nb: download datasets from notebooks and scripts: fast, resumable, verified.

>>> import rheo_nb
>>> results = await rheo_nb.fetch(urls, dest="data/")   # in a notebook cell  # doctest: +SKIP
>>> results = rheo_nb.fetch_sync(urls, dest="data/")    # anywhere            # doctest: +SKIP
"""

from typing import TYPE_CHECKING

from ._version import __version__
from .api import Job, clean, fetch, fetch_sync, start
from .auth import ApiKey, BearerToken, DigestAuth, OAuth2ClientCredentials
from .client import ClientFactory
from .display import Display, TextProgress
from .errors import (
    DestinationError,
    DownloadError,
    DownloadsFailed,
    ExtractError,
    HTTPStatusError,
    IntegrityError,
    InvalidItemError,
    ManifestError,
    OptionError,
    RedirectError,
    RheoNbError,
    TooLargeError,
    TransferError,
)
from .events import (
    Cancelled,
    Completed,
    Event,
    EventType,
    Extracting,
    Failed,
    Progress,
    Queued,
    Restarted,
    Retrying,
    Skipped,
    Started,
    Status,
    Subscription,
    Throttled,
    Validating,
)
from .items import File, Outcome
from .manager import DownloadManager
from .objstore import ObjectPath
from .options import Options
from .results import Results
from .tracker import DownloadInfo, Stats

if TYPE_CHECKING:
    from .display.notebook import NotebookProgress
    from .manifest import read_manifest


def __getattr__(name: str) -> object:
    # ipywidgets is optional and slow to import: load the widget display on first use.
    if name == "NotebookProgress":
        from .display.notebook import NotebookProgress

        return NotebookProgress
    # The manifest readers (csv, gzip, json…): loaded when first asked for.
    if name == "read_manifest":
        from .manifest import read_manifest

        return read_manifest
    raise AttributeError(f"module 'rheo_nb' has no attribute {name!r}")


__all__ = [
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
    "ObjectPath",
    "OptionError",
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
