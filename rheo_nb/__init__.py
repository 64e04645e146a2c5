"""rheo_nb: download datasets from notebooks and scripts: fast, resumable, verified.

>>> import rheo_nb
>>> results = await rheo_nb.fetch(urls, dest="data/")   # in a notebook cell  # doctest: +SKIP
>>> results = rheo_nb.fetch_sync(urls, dest="data/")    # anywhere            # doctest: +SKIP
"""

from ._version import __version__
from .api import Job, clean, fetch, fetch_sync, start
from .auth import ApiKey, BearerToken, DigestAuth, OAuth2ClientCredentials
from .client import ClientFactory
from .display import Display, TextProgress
from .errors import (
    DestinationError,
    DownloadError,
    DownloadsFailed,
    HTTPStatusError,
    IntegrityError,
    InvalidItemError,
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
    Failed,
    Progress,
    Queued,
    Restarted,
    Retrying,
    Skipped,
    Started,
    Status,
    Subscription,
    Validating,
)
from .items import File, Outcome
from .manager import DownloadManager
from .objstore import ObjectPath
from .options import Options
from .results import Results
from .tracker import DownloadInfo, Stats


def __getattr__(name: str) -> object:
    # ipywidgets is optional and slow to import: load the widget display on first use.
    if name == "NotebookProgress":
        from .display.notebook import NotebookProgress

        return NotebookProgress
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
    "Failed",
    "File",
    "HTTPStatusError",
    "IntegrityError",
    "InvalidItemError",
    "Job",
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
    "TooLargeError",
    "TransferError",
    "Validating",
    "__version__",
    "clean",
    "fetch",
    "fetch_sync",
    "start",
]
