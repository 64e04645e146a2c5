"""Object storage as a destination: a download streamed into an S3 multipart upload.

The object-storage twin of the local part file. An ``s3://bucket/prefix/`` destination is a
:class:`Bucket`; each download into it is a :class:`MultipartUpload`, which keeps the local
promises in object-storage terms:

* **Nothing at the key until verified.** Bytes are grouped into parts of ``part_size`` and
  uploaded as they fill; ``CompleteMultipartUpload`` (or, for a file that fits in one
  part, a single ``PutObject``) is sent only after the length, and the hash when one is
  given (computed while streaming), check out. The hash goes into the object's metadata
  (``x-amz-meta-sha256: <hex>``), so a later run can verify the object without reading it.
* **Bounded memory.** An upload holds at most ``parts_in_flight`` part buffers (the one
  filling and those uploading): at most ``part_size × parts_in_flight`` bytes per download,
  32 MiB with the defaults (8 MiB × 4).
* **Failure aborts, cancel keeps.** :meth:`MultipartUpload.discard` aborts the multipart
  upload; :meth:`MultipartUpload.keep` leaves it, and its record, for the next run.
* **Resume.** Each multipart upload has a small record in the bucket, beside the object
  (``<dir>/.rheo_nb/<name>.<id>.json``: the source URL's digest, its validator, the total,
  the part size and the expected hash). The record lives in the bucket, not on local disk,
  because cluster workers and throwaway notebook machines share no disk: any machine with
  the credentials can continue the upload. The parts done are not recorded: S3 itself lists
  them (``ListParts``), so a killed process loses nothing a resume needs.
* **Verified resume.** S3 cannot read back the parts of an incomplete upload, so a resume
  that must check a hash re-reads the prefix from the HTTP source (the stream starts at 0,
  guarded by ``If-Range``). Bytes that fall in a part already uploaded are not sent again:
  their MD5 is compared with the part's ETag, which proves the stored part holds the same
  bytes; a part that differs, or whose ETag is not an MD5 (SSE-KMS), is uploaded again.
  Without a hash the stream continues after the parts already there, and a split that
  was stopped asks only for the parts missing (:meth:`ObjectDestination.resumable`).
* **Two writers, one whole object.** A call joins an upload of the same source that was
  open when it opened the bucket (the parts are the same bytes at the same numbers);
  writers that start together use their own uploads and the last completed wins, whole.
  Completing aborts the other uploads of the same source: a writer whose upload was
  aborted so, or completed by another, finds the object and says so
  (:class:`AlreadyComplete`, a skip for the transfer).

:class:`ObjectDestination` is the :class:`~rheo_nb.destination.Destination` the transfer
writes through (its archives are extracted into the bucket by :mod:`rheo_nb.objextract`);
:class:`ObjectPath` is what outcomes and events carry for an object. ``storage_options``'
``s3_additional_kwargs`` go on every request that takes them (:meth:`Bucket.request`),
as s3fs applies them.

>>> async with Bucket("s3://my-bucket/data/", {"profile": "lab"}) as bucket:  # doctest: +SKIP
...     up = await bucket.upload("data/train.csv", url=url)
...     await up.start(etag, size, continuing=False)  # the response is in
...     await up.append(chunks)           # from up.position on
...     await up.commit()                 # verify, then complete
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

from .destination import Present, Resume, Skip, Unpacking
from .errors import (
    DestinationError,
    DownloadError,
    IntegrityError,
    OptionError,
    TransferError,
)
from .format import mask_url
from .format import size as fmt_size
from .hashing import ExpectedHash
from .http import Answer, Decision, Restart
from .partfile import url_key
from .segments import Segment, Split
from .stream import Sink

MiB = 1 << 20
#: Default part size; every part but the last must be at least 5 MiB on S3.
PART_SIZE = 8 * MiB
MIN_PART_SIZE = 5 * MiB
MAX_PARTS = 10_000
#: Part buffers one upload holds at once (filling plus uploading).
PARTS_IN_FLIGHT = 4
RECORD_DIR = ".rheo_nb"
#: Longest wait, on a cancel, for full parts to finish uploading.
KEEP_WAIT = 10.0
#: The prefix of user metadata keys rheo_nb writes (``x-amz-meta-rheo-nb-…``).
_META = "rheo-nb-"
_MD5_ETAG = re.compile(r'^"?([0-9a-f]{32})"?$')
_AUTH_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "TokenRefreshRequired",
        "AuthorizationHeaderMalformed",
        "InvalidClientTokenId",
    }
)


class AlreadyComplete(Exception):
    """Another writer completed the object this upload was writing: it is whole, skip."""

    def __init__(self, size: int) -> None:
        super().__init__(f"completed by another writer ({size} bytes)")
        self.size = size


def split_url(url: str) -> tuple[str, str]:
    """``"s3://bucket/a/b/"`` → ``("bucket", "a/b/")``; the prefix ends in ``/`` unless empty."""
    try:
        parts = urlsplit(url)
    except ValueError:
        raise OptionError("not an s3:// destination: the URL cannot be parsed") from None
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise OptionError("an s3:// destination takes no query, fragment or credentials")
    if parts.scheme != "s3" or not parts.netloc:
        raise OptionError(
            f"not an s3:// destination: {url!r}; object storage is written to as "
            "s3://bucket/prefix (any S3-compatible store: give its endpoint_url in "
            "storage_options)"
        )
    prefix = parts.path.lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return parts.netloc, prefix


class ObjectPath(str):
    """Where an object is, or will be: its ``s3://bucket/key`` URL.

    What outcomes, events and ``Results.paths`` carry for a download into a bucket: a
    ``str``, so pandas, Dask, xarray and fsspec take it as it is (with the same
    ``storage_options``), with the few path attributes a display needs.

    >>> p = ObjectPath("s3://data/raw/2024/a.csv")
    >>> p.bucket, p.key, p.name, p.parent
    ('data', 'raw/2024/a.csv', 'a.csv', ObjectPath('s3://data/raw/2024'))
    >>> pandas.read_csv(p, storage_options=options)     # doctest: +SKIP
    """

    __slots__ = ()

    @classmethod
    def of(cls, url: str) -> ObjectPath:
        """The destination ``url`` (``s3://bucket/prefix/``) checked, without a trailing
        ``/``. :raises OptionError: not an ``s3://`` URL a bucket can be opened with."""
        bucket, prefix = split_url(url)
        return cls(f"s3://{bucket}/{prefix}".rstrip("/"))

    @property
    def bucket(self) -> str:
        return self[5:].partition("/")[0]

    @property
    def key(self) -> str:
        """The object's key in its bucket (empty for the bucket itself)."""
        return self[5:].partition("/")[2]

    @property
    def name(self) -> str:
        return self.key.rpartition("/")[2]

    @property
    def parent(self) -> ObjectPath:
        folder = self.key.rpartition("/")[0]
        return ObjectPath(f"s3://{self.bucket}/{folder}".rstrip("/"))

    def joinpath(self, *parts: str) -> ObjectPath:
        return ObjectPath("/".join([self.rstrip("/"), *parts]))

    def with_name(self, name: str) -> ObjectPath:
        return self.parent.joinpath(name)

    def __repr__(self) -> str:
        return f"ObjectPath({str(self)!r})"


def part_size_for(total: int | None, part_size: int) -> int:
    """``part_size``, grown (in whole MiB) when ``total`` would need more than 10,000 parts."""
    if total is None or total <= part_size * MAX_PARTS:
        return part_size
    return -(-total // (MAX_PARTS * MiB)) * MiB


def record_key(key: str, upload_id: str) -> str:
    """Where the resume record of ``upload_id`` lives: beside the object, in ``.rheo_nb/``."""
    folder, _, name = key.rpartition("/")
    digest = hashlib.sha256(upload_id.encode()).hexdigest()[:16]
    return f"{folder + '/' if folder else ''}{RECORD_DIR}/{name}.{digest}.json"


@dataclass(frozen=True, slots=True)
class Record:
    """What a later run needs to continue a multipart upload (no secret in it)."""

    upload_id: str
    key: str
    url: str  # url_key() of the source
    validator: str
    total: int | None
    part_size: int
    hash: str | None  # "sha256:<hex>", as given

    def to_json(self) -> bytes:
        return json.dumps({"version": 1, **_fields(self)}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Record | None:
        try:
            raw = json.loads(data)
            total = raw["total"]
            return cls(
                str(raw["upload_id"]),
                str(raw["key"]),
                str(raw["url"]),
                str(raw["validator"]),
                None if total is None else int(total),
                int(raw["part_size"]),
                None if raw["hash"] is None else str(raw["hash"]),
            )
        except (ValueError, KeyError, TypeError):
            return None


def _fields(r: Record) -> dict[str, Any]:
    return {name: getattr(r, name) for name in Record.__slots__}


@dataclass(frozen=True, slots=True)
class Part:
    """A part stored in the upload: its ETag (an MD5 for plain uploads) and size."""

    etag: str
    size: int


# --- errors ----------------------------------------------------------------------------------


def _error(exc: BaseException, where: str, doing: str) -> Exception:
    """One translation of botocore/aiohttp errors, with no server text and no secret."""
    name = type(exc).__name__
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):
        err = response.get("Error", {})
        code = str(err.get("Code", "")) if isinstance(err, Mapping) else ""
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            bucket = urlsplit(where).netloc
            return DestinationError(where, f"bucket {bucket!r} does not exist ({doing})")
        if code in _AUTH_CODES or (code in ("403", "Forbidden") and status == 403):
            return DestinationError(
                where,
                f"S3 refused the credentials ({code or status} on {doing}): check the "
                "access key and secret (storage_options, the environment or the profile)",
            )
        if code == "AccessDenied":
            return DestinationError(
                where, f"access denied on {doing}: the credentials lack that permission"
            )
        if (isinstance(status, int) and status >= 500) or code in ("SlowDown", "RequestTimeout"):
            return TransferError(where, f"S3 error {code or status} on {doing}")
        return DestinationError(where, f"S3 error {code or status} on {doing}")
    if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"):
        return DestinationError(
            where,
            "no S3 credentials found: set key/secret in storage_options, AWS_ACCESS_KEY_ID "
            "and AWS_SECRET_ACCESS_KEY, or a profile",
        )
    if isinstance(exc, OSError | TimeoutError) or "Endpoint" in name or "Connect" in name:
        endpoint = urlsplit(str(getattr(exc, "kwargs", {}).get("endpoint_url") or ""))
        at = f" at {mask_url(f'{endpoint.scheme}://{endpoint.netloc}')}" if endpoint.netloc else ""
        return TransferError(where, f"cannot reach S3{at} ({name} on {doing})")
    return DestinationError(where, f"S3 client error {name} on {doing}")


def _code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _client_error_types() -> tuple[type[BaseException], ...]:
    import aiohttp
    from botocore.exceptions import BotoCoreError, ClientError

    return (ClientError, BotoCoreError, aiohttp.ClientError, OSError, TimeoutError)


# --- the destination --------------------------------------------------------------------------


def _prepare(options: Mapping[str, Any]) -> dict[str, Any]:
    """Import the client libraries and warm a botocore session's caches. Blocking."""
    try:
        import s3fs  # noqa: F401
        from aiobotocore.session import AioSession
    except ImportError:
        raise OptionError(
            "s3:// destinations need the s3 extra: pip install 'rheo_nb[s3]'"
        ) from None
    out = dict(options)
    if out.get("session") is None:
        session = AioSession(profile=out.get("profile"))
        session.get_scoped_config()  # reads the shared config and credentials files
        # A throwaway client loads the models into the session's caches; placeholder
        # keys keep it from resolving credentials here (that may ask an instance role).
        asyncio.run(_throwaway_client(session))
        out["session"] = session
    return out


async def _throwaway_client(session: Any) -> None:
    async with session.create_client(
        "s3", region_name="us-east-1", aws_access_key_id="-", aws_secret_access_key="-"
    ):
        pass


#: The S3 requests rheo_nb makes: ``s3_additional_kwargs`` must name parameters of them.
OPERATIONS = (
    "put_object",
    "create_multipart_upload",
    "upload_part",
    "complete_multipart_upload",
    "abort_multipart_upload",
    "head_object",
    "get_object",
    "list_parts",
    "list_multipart_uploads",
    "list_objects_v2",
    "delete_object",
    "delete_objects",
    "copy_object",
)
#: The server-side encryption with a key of the caller's (SSE-C) that a copy must also
#: give for its source.
_SSE_C = ("SSECustomerAlgorithm", "SSECustomerKey", "SSECustomerKeyMD5")


def _additional_kwargs(options: Mapping[str, Any]) -> dict[str, Any]:
    extra = options.get("s3_additional_kwargs") or {}
    if not isinstance(extra, Mapping) or not all(isinstance(k, str) for k in extra):
        raise OptionError(
            "s3_additional_kwargs must be a mapping of S3 request parameters, e.g. "
            "{'ServerSideEncryption': 'aws:kms'}"
        )
    return dict(extra)


def _accepted(client: Any, op: str) -> frozenset[str]:
    """The parameters the client's ``op`` takes (its input shape)."""
    model = client.meta.service_model.operation_model(client.meta.method_to_api_mapping[op])
    shape = model.input_shape
    return frozenset(shape.members) if shape is not None else frozenset()


def _extra_for(client: Any, op: str, additional: Mapping[str, Any]) -> dict[str, Any]:
    """What ``op`` takes of ``s3_additional_kwargs``, as s3fs applies them: each request
    gets the parameters it has (encryption on writes, an SSE-C key on reads too)."""
    if not additional:
        return {}
    accepted = _accepted(client, op)
    extra = {k: v for k, v in additional.items() if k in accepted}
    if op == "copy_object":
        extra |= {f"CopySource{k}": additional[k] for k in _SSE_C if k in additional}
    return extra


def _check_additional(client: Any, additional: Mapping[str, Any]) -> None:
    """Refuse a name no request of rheo_nb takes (a typo would silently do nothing)."""
    known = frozenset().union(*(_accepted(client, op) for op in OPERATIONS))
    if unknown := sorted(set(additional) - known):
        close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise OptionError(
            f"s3_additional_kwargs: {', '.join(map(repr, unknown))} is no parameter of the "
            f"S3 requests rheo_nb makes{hint}"
        )


class Bucket:
    """An ``s3://bucket/prefix/`` destination: one S3 client for every download into it.

    ``storage_options`` are s3fs's (``key``, ``secret``, ``token``, ``profile``,
    ``endpoint_url``, ``anon``, ``client_kwargs``, ``config_kwargs``…); without them the
    standard chains apply (environment, shared config files, instance and container roles).
    Opening checks the bucket and the credentials with one request.

    >>> async with Bucket("s3://data/raw/", {"endpoint_url": "http://127.0.0.1:9000"}) as b:
    ...     print(await b.existing("train.csv"))               # doctest: +SKIP
    """

    def __init__(
        self,
        url: str,
        storage_options: Mapping[str, Any] | None = None,
        *,
        part_size: int = PART_SIZE,
    ) -> None:
        self.name, self.prefix = split_url(url)
        if not isinstance(part_size, int) or part_size < MIN_PART_SIZE:
            raise OptionError(f"part_size must be an int of at least {fmt_size(MIN_PART_SIZE)}")
        self.part_size = part_size
        self._options = dict(storage_options or {})
        self._fs: Any = None
        self.client: Any = None
        self._errors: tuple[type[BaseException], ...] = ()
        self._additional = _additional_kwargs(self._options)
        self._extra: dict[str, dict[str, Any]] = {}  # operation → what it takes of them
        #: Keys with a multipart upload under the prefix when the bucket was opened
        #: (None: too many to list at once). An upload started since belongs to a call
        #: running now, which is not resumed but joined or outlived (see the module).
        self._pending: set[str] | None = None

    def __repr__(self) -> str:
        return f"Bucket('s3://{self.name}/{self.prefix}')"

    def url(self, key: str = "") -> ObjectPath:
        return ObjectPath(f"s3://{self.name}/{key}")

    def key(self, relative: str) -> str:
        return self.prefix + relative.lstrip("/")

    async def __aenter__(self) -> Self:
        # Importing s3fs and botocore, and botocore reading its JSON models and the AWS
        # config files, take ~0.5 s of blocking work: done in a thread, not on the loop.
        options = await asyncio.to_thread(_prepare, self._options)
        import s3fs

        self._errors = _client_error_types()
        try:
            self._fs = s3fs.S3FileSystem(asynchronous=True, skip_instance_cache=True, **options)
            self.client = await self._fs.set_session()
        except TypeError as exc:
            raise OptionError(f"storage_options not understood: {exc}") from None
        try:
            _check_additional(self.client, self._additional)
        except OptionError:
            await self.close()
            raise
        try:
            # One request checks the bucket and the credentials, and tells which keys
            # have uploads a download may resume (most often none: no look-up per file).
            page = await self._first_look(options)
        except self._errors as exc:
            await self.close()
            error = _error(exc, self.url(self.prefix), "ListMultipartUploads")
            if isinstance(error, DownloadError) and not isinstance(error, DestinationError):
                error = DestinationError(error.url, error.cause)  # out of reach: unusable
            raise error from None
        if not page.get("IsTruncated"):
            self._pending = {str(u["Key"]) for u in page.get("Uploads", [])}
        return self

    async def _first_look(self, options: Mapping[str, Any]) -> Any:
        """The opening request, through a client of its own that retries once, quickly: a
        store out of reach (a wrong endpoint_url, no network) is said at once, not after
        botocore's retries with backoff (~9 s), and a wrong name or credentials after one
        request. The downloads keep botocore's retries, unless ``config_kwargs`` say."""
        args = {"Bucket": self.name, "Prefix": self.prefix}
        config = dict(options.get("config_kwargs") or {})
        if "retries" in config:
            return await self.request("list_multipart_uploads", **args)
        import s3fs

        config["retries"] = {"total_max_attempts": 2, "mode": "standard"}
        fs = s3fs.S3FileSystem(
            asynchronous=True, skip_instance_cache=True, **{**options, "config_kwargs": config}
        )
        client = await fs.set_session()
        try:
            extra = _extra_for(client, "list_multipart_uploads", self._additional)
            return await client.list_multipart_uploads(**{**extra, **args})
        finally:
            await client.close()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            await client.close()

    def started(self, key: str) -> None:
        """An upload of ``key`` was created through this bucket: a later look-up sees it."""
        if self._pending is not None:
            self._pending.add(key)

    async def call(self, op: str, key: str, **kwargs: Any) -> Any:
        """The client's ``op`` on ``key``, its errors translated."""
        try:
            return await self.request(op, Bucket=self.name, Key=key, **kwargs)
        except self._errors as exc:
            raise _error(exc, self.url(key), op) from None

    def request(self, op: str, **kwargs: Any) -> Any:
        """The client's ``op`` (a coroutine), with the ``s3_additional_kwargs`` it takes."""
        extra = self._extra.get(op)
        if extra is None:
            extra = self._extra[op] = _extra_for(self.client, op, self._additional)
        return getattr(self.client, op)(**{**extra, **kwargs})

    # --- looking -------------------------------------------------------------------------------

    async def head(self, key: str) -> dict[str, Any] | None:
        """The object's ``HeadObject`` answer, or None when there is none."""
        try:
            return dict(await self.request("head_object", Bucket=self.name, Key=key))
        except self._errors as exc:
            if _code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise _error(exc, self.url(key), "HeadObject") from None

    async def existing(
        self, key: str, *, size: int | None = None, expected: ExpectedHash | None = None
    ) -> int | None:
        """The size of a complete object at ``key`` that may be kept, else None.

        It must have ``size`` bytes when ``size`` is given, and carry the ``expected`` hash
        in its metadata when one is given: an object without that metadata cannot be
        verified without reading it back, so it is downloaded again.
        """
        head = await self.head(key)
        if head is None:
            return None
        length = int(head["ContentLength"])
        if size is not None and length != size:
            return None
        if expected is not None:
            meta = {k.lower(): v for k, v in head.get("Metadata", {}).items()}
            if meta.get(expected.algorithm, "").lower() != expected.hexdigest:
                return None
        return length

    async def records(self, key: str) -> list[Record]:
        """rheo_nb's multipart uploads still open for exactly ``key``, newest first."""
        uploads: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"Bucket": self.name, "Prefix": key}
        try:
            while True:
                page = await self.request("list_multipart_uploads", **kwargs)
                uploads += [u for u in page.get("Uploads", []) if u["Key"] == key]
                if not page.get("IsTruncated"):
                    break
                kwargs["KeyMarker"] = page["NextKeyMarker"]
                kwargs["UploadIdMarker"] = page["NextUploadIdMarker"]
        except self._errors as exc:
            raise _error(exc, self.url(key), "ListMultipartUploads") from None
        uploads.sort(key=lambda u: u.get("Initiated") or 0, reverse=True)
        found = []
        for u in uploads:
            record = await self._read_record(key, u["UploadId"])
            if record is not None:
                found.append(record)
        return found

    async def get(self, key: str) -> bytes | None:
        """The whole object at ``key`` (a small one: a record), or None when there is none."""
        try:
            resp = await self.request("get_object", Bucket=self.name, Key=key)
            async with resp["Body"] as body:
                data: bytes = await body.read()
        except self._errors as exc:
            if _code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise _error(exc, self.url(key), "GetObject") from None
        return data

    async def _read_record(self, key: str, upload_id: str) -> Record | None:
        data = await self.get(record_key(key, upload_id))
        if data is None:
            return None  # not rheo_nb's upload
        record = Record.from_json(data)
        return record if record is not None and record.upload_id == upload_id else None

    async def list_parts(self, record: Record) -> dict[int, Part] | None:
        """The parts stored in the upload, or None when the upload is gone."""
        parts: dict[int, Part] = {}
        kwargs: dict[str, Any] = {"UploadId": record.upload_id}
        while True:
            try:
                page = await self.call("list_parts", record.key, **kwargs)
            except DestinationError:
                if await self._upload_gone(record):
                    return None
                raise
            for p in page.get("Parts", []):
                # Some servers list a part sent twice twice; the last listed is the latest.
                parts[int(p["PartNumber"])] = Part(str(p["ETag"]), int(p["Size"]))
            if not page.get("IsTruncated"):
                return parts
            kwargs["PartNumberMarker"] = page["NextPartNumberMarker"]

    async def _upload_gone(self, record: Record) -> bool:
        try:
            await self.request(
                "list_parts",
                Bucket=self.name,
                Key=record.key,
                UploadId=record.upload_id,
                MaxParts=1,
            )
        except self._errors as exc:
            return _code(exc) == "NoSuchUpload"
        return False

    # --- writing --------------------------------------------------------------------------------

    async def upload(
        self,
        key: str,
        *,
        url: str,
        expected: ExpectedHash | None = None,
        parts_in_flight: int = PARTS_IN_FLIGHT,
        resume: bool = True,
    ) -> MultipartUpload:
        """The upload of one download from ``url`` to ``key`` (a full key: see :meth:`key`).

        With ``resume``, an interrupted upload of the same source (same URL and expected
        hash) is found: then :attr:`MultipartUpload.offset` says where the HTTP stream
        should start (0 to re-read a prefix that must be hashed) and
        :attr:`MultipartUpload.validator` what ``If-Range`` must send. Once the response is
        in, :meth:`MultipartUpload.start` says whether it continues that upload.
        """
        if not isinstance(parts_in_flight, int) or parts_in_flight < 1:
            raise OptionError("parts_in_flight must be an int >= 1")
        up = MultipartUpload(self, key, url_key(url), expected, parts_in_flight)
        if resume and (self._pending is None or key in self._pending):
            for record in await self.records(key):
                if up.matches(record):
                    parts = await self.list_parts(record)
                    if parts is not None:
                        up.resume(record, parts)
                        break
        return up

    async def put(self, key: str, body: bytes, metadata: Mapping[str, str] | None = None) -> None:
        """One whole object in one request (files that fit in one part)."""
        await self.call("put_object", key, Body=body, Metadata=dict(metadata or {}))

    async def abort(self, record: Record) -> None:
        """Abort ``record``'s multipart upload and delete its record (both may be gone)."""
        with contextlib.suppress(DestinationError):
            await self.call("abort_multipart_upload", record.key, UploadId=record.upload_id)
        await self.call("delete_object", record_key(record.key, record.upload_id))

    async def read(self, key: str, start: int, end: int, etag: str | None = None) -> bytes:
        """Bytes ``start``..``end`` (exclusive) of the object at ``key``; with ``etag``, only
        while the object is still that version (a change fails with a 412)."""
        kwargs: dict[str, Any] = {"Range": f"bytes={start}-{end - 1}"}
        if etag:
            kwargs["IfMatch"] = etag
        resp = await self.call("get_object", key, **kwargs)
        try:
            async with resp["Body"] as body:
                data: bytes = await body.read()
        except self._errors as exc:
            raise _error(exc, self.url(key), "GetObject") from None
        return data

    async def listed(self, prefix: str, *, limit: int | None = None) -> list[str]:
        """Keys of the objects under ``prefix`` (at most ``limit`` of them)."""
        found: list[str] = []
        kwargs: dict[str, Any] = {"Bucket": self.name, "Prefix": prefix}
        if limit is not None:
            kwargs["MaxKeys"] = limit
        try:
            while True:
                page = await self.request("list_objects_v2", **kwargs)
                found += [str(o["Key"]) for o in page.get("Contents", [])]
                if not page.get("IsTruncated") or (limit is not None and len(found) >= limit):
                    return found[:limit]
                kwargs["ContinuationToken"] = page["NextContinuationToken"]
        except self._errors as exc:
            raise _error(exc, self.url(prefix), "ListObjectsV2") from None

    async def delete(self, keys: Sequence[str]) -> None:
        """Delete the objects at ``keys`` (those already gone count as deleted)."""
        for start in range(0, len(keys), 1000):  # DeleteObjects takes 1,000 keys at most
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            try:
                resp = await self.request(
                    "delete_objects", Bucket=self.name, Delete={"Objects": batch, "Quiet": True}
                )
            except self._errors as exc:
                raise _error(exc, self.url(self.prefix), "DeleteObjects") from None
            if errors := resp.get("Errors"):
                first = errors[0]
                raise DestinationError(
                    self.url(str(first.get("Key", ""))),
                    f"S3 error {first.get('Code', '?')} on DeleteObjects",
                )

    async def copy(self, source: str, key: str) -> None:
        """A server-side copy of the object at ``source`` to ``key``, in one request."""
        copy_source = {"Bucket": self.name, "Key": source}
        await self.call("copy_object", key, CopySource=copy_source)

    async def clean(self, prefix: str | None = None) -> list[str]:
        """Abort every multipart upload rheo_nb left under ``prefix`` (by default the
        bucket's); their keys.

        Uploads without a rheo_nb record (another tool's) are left alone.
        """
        keys: set[str] = set()
        prefix = self.prefix if prefix is None else prefix
        kwargs: dict[str, Any] = {"Bucket": self.name, "Prefix": prefix}
        uploads: list[tuple[str, str]] = []
        try:
            while True:
                page = await self.request("list_multipart_uploads", **kwargs)
                uploads += [(u["Key"], u["UploadId"]) for u in page.get("Uploads", [])]
                if not page.get("IsTruncated"):
                    break
                kwargs["KeyMarker"] = page["NextKeyMarker"]
                kwargs["UploadIdMarker"] = page["NextUploadIdMarker"]
        except self._errors as exc:
            raise _error(exc, self.url(prefix), "ListMultipartUploads") from None
        for key, upload_id in uploads:
            record = await self._read_record(key, upload_id)
            if record is not None:
                await self.abort(record)
                keys.add(key)
        return sorted(keys)


async def clean(dest: str, storage_options: Mapping[str, Any] | None = None) -> list[ObjectPath]:
    """Abort the multipart uploads rheo_nb left under ``dest``; the objects they were for.

    Interrupted downloads keep their uploads so that a rerun can resume them; this gives
    up on them. A bucket lifecycle rule (``AbortIncompleteMultipartUpload``) also expires
    forgotten ones. (:func:`rheo_nb.clean` is the blocking call.)

    >>> await rheo_nb.objstore.clean("s3://my-bucket/datasets/")       # doctest: +SKIP
    [ObjectPath('s3://my-bucket/datasets/imagenet/train.tar')]
    """
    async with Bucket(dest, storage_options) as bucket:
        return [bucket.url(key) for key in await bucket.clean()]


# --- one download ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Buffer:
    """One part being filled; it holds one of the upload's slots while it exists.

    A ``BytesIO`` that owns its bytes is sent as it is, in 64 KiB writes. A ``bytes`` body
    would cost a second copy of the part while it is sent (botocore wraps it in a
    ``BytesIO`` sharing the bytes, and aiohttp's first look at that buffer unshares it).
    """

    number: int
    data: io.BytesIO = field(default_factory=io.BytesIO)

    def __len__(self) -> int:
        return self.data.tell()

    def md5(self) -> str:
        with self.data.getbuffer() as view:
            return hashlib.md5(view, usedforsecurity=False).hexdigest()


class MultipartUpload:
    """The multipart upload of one download, and its resume record.

    Bytes go in with :meth:`append` (in order, from :attr:`offset`) or :meth:`write_at`
    (a segment's bytes, each segment starting on a part boundary). :meth:`commit`
    verifies and completes; :meth:`discard` aborts; :meth:`keep` leaves the upload for a
    later run. Memory: at most ``part_size × parts_in_flight`` bytes of parts at once.

    A write is interrupted (cancelled) only while it waits for a free part buffer, before
    a part starts: what it had written is counted (:attr:`position`, or ``done``), so the
    next write continues exactly there.
    """

    def __init__(
        self,
        bucket: Bucket,
        key: str,
        url: str,
        expected: ExpectedHash | None,
        parts_in_flight: int,
    ) -> None:
        self.bucket = bucket
        self.key = key
        self.where = bucket.url(key)
        self.url = url  # url_key() of the source: no secret
        self.expected = expected
        self.parts_in_flight = parts_in_flight
        self._creating = asyncio.Lock()
        self._reset(None, None)

    def _reset(self, validator: str | None, total: int | None) -> None:
        self.validator = validator
        self.total = total
        self.part_size = part_size_for(total, self.bucket.part_size)
        self.record: Record | None = None  # once the multipart upload exists
        self.parts: dict[int, Part] = {}  # stored in the upload (earlier runs' and ours)
        #: Where the HTTP stream must start: after the parts already uploaded, or at 0
        #: when their bytes must be hashed again.
        self.offset = 0
        self.resumed = 0  # bytes found uploaded by an earlier run
        self._open: dict[int, _Buffer] = {}  # part number → the buffer filling it
        self._slots = asyncio.Semaphore(self.parts_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._failure: BaseException | None = None
        self._hasher = self.expected.new() if self.expected is not None else None
        self._hashed = 0  # bytes fed to the hasher: always a prefix of the file
        self._sent = 0  # bytes handed to append/write_at this run

    def __repr__(self) -> str:
        return f"MultipartUpload({self.where!r}, parts={len(self.parts)})"

    @property
    def hashed(self) -> int:
        """Bytes hashed so far, in order from 0. Segments ahead of the first are uploaded
        but not hashed: before :meth:`commit`, a segmented download with a hash feeds
        bytes ``hashed..total`` again (:meth:`write_at`); parts already uploaded are then
        checked against their ETag, not sent again."""
        return self._hashed

    @property
    def position(self) -> int:
        """Where the next byte handed to :meth:`append` goes."""
        return self.offset + self._sent

    @property
    def held(self) -> int:
        """Bytes this upload holds or has been handed: what giving it up drops."""
        return max(self.position, sum(p.size for p in self.parts.values()))

    @property
    def failed(self) -> bool:
        """A part failed to upload: its bytes are lost (see :meth:`settle`)."""
        return self._failure is not None

    # --- resume ------------------------------------------------------------------------

    def matches(self, record: Record) -> bool:
        return (
            record.url == self.url
            and bool(record.validator)
            and record.part_size >= MIN_PART_SIZE
            and record.hash == (str(self.expected) if self.expected else None)
        )

    def resume(self, record: Record, parts: dict[int, Part]) -> None:
        """Take up ``record``'s upload, whose stored parts are ``parts``."""
        self.record = record
        self.validator = record.validator
        self.total = record.total
        self.part_size = record.part_size
        self.parts = {n: p for n, p in parts.items() if self._is_whole(n, p.size)}
        self._from_parts()

    def _from_parts(self) -> None:
        """Continue after the parts stored in order from the first; from 0 (re-read,
        parts matched by MD5 rather than sent again) when a hash must see every byte."""
        done = 0
        while done // self.part_size + 1 in self.parts:
            done += self.parts[done // self.part_size + 1].size
        self.resumed = done
        self.offset = 0 if self.expected is not None else done
        self._sent = 0
        self._hasher = self.expected.new() if self.expected is not None else None
        self._hashed = 0

    def from_start(self) -> None:
        """The body comes again from byte 0 (a full ``200``, the same version of the
        source): it continues this upload all the same, each part already stored being
        checked by its MD5 instead of sent again."""
        self.offset = self._sent = self._hashed = 0
        self._hasher = self.expected.new() if self.expected is not None else None

    def joinable(self, validator: str | None, total: int | None) -> bool:
        """A body from byte 0 with ``validator`` and ``total`` may continue this upload."""
        return (
            self.record is not None
            and validator is not None
            and validator == self.validator
            and total == self.total
            and self._sent == 0
        )

    def _is_whole(self, number: int, size: int) -> bool:
        if self.total is None:
            return size == self.part_size
        start = (number - 1) * self.part_size
        return start < self.total and size == min(self.part_size, self.total - start)

    async def settle(self) -> None:
        """After a part failed to upload, or ranges stopped: let the parts on their way
        land (as :meth:`keep` does), drop those filling, and continue after what is
        stored, as a resume from an earlier run does."""
        await self.keep()
        self._failure = None
        self._from_parts()

    async def start(self, validator: str | None, total: int | None, *, continuing: bool) -> bool:
        """The response is in: ``validator`` and ``total`` of the source, and whether the
        body continues this upload (a ``206`` from :attr:`position`, same validator).

        When it does not, the upload is given up (aborted) and the file starts at 0: the
        source changed, or its server ignored the range. Returns whether it continued.
        """
        if continuing and validator == self.validator and self.validator is not None:
            if self.total is None and self.record is None:
                self.total = total  # nothing stored was sized by it yet
            if total == self.total:
                return True
        await self._stop_tasks()
        if self.record is not None:
            await self.bucket.abort(self.record)
        self._reset(validator, total)
        return False

    # --- bytes in ------------------------------------------------------------------------

    async def append(self, chunks: Sequence[bytes]) -> None:
        """The next bytes of the stream, from :attr:`position` on."""
        await self.write_at(self.position, chunks)

    async def write_at(
        self, offset: int, chunks: Sequence[bytes], done: Callable[[int], None] | None = None
    ) -> None:
        """Bytes starting at ``offset``: the start of a part, or where an earlier call of
        the same segment stopped. ``done(n)`` is told of each piece as it is written."""
        await self._check()
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                number, within = divmod(offset, self.part_size)
                number += 1
                buf = self._open.get(number)
                if buf is None:
                    if within:
                        raise ValueError(
                            f"bytes at {offset} do not continue a part of {self.where}"
                        )
                    await self._slots.acquire()  # the one place a write may be cancelled
                    buf = self._open[number] = _Buffer(number)
                elif within != len(buf):
                    raise ValueError(f"bytes at {offset} do not continue part {number}")
                take = min(len(view), self.part_size - within)
                if self.total is not None:
                    take = min(take, self.total - offset)
                    if take <= 0:
                        raise IntegrityError(
                            self.where, f"more than the {self.total} bytes announced"
                        )
                piece = view[:take]
                buf.data.write(piece)
                if self._hasher is not None and offset == self._hashed:
                    self._hasher.update(piece)
                    self._hashed += take
                offset += take
                self._sent += take
                if done is not None:
                    done(take)
                view = view[take:]
                if len(buf) == self.part_size or offset == self.total:
                    self._part_full(self._open.pop(number))

    def _part_full(self, buf: _Buffer) -> None:
        if self.record is None and self.total is not None and self.total <= self.part_size:
            self._open[buf.number] = buf  # the whole file: one PutObject at commit
            return
        known = self.parts.get(buf.number)
        if known is not None and known.size == len(buf):
            match = _MD5_ETAG.match(known.etag.lower())
            if match and buf.md5() == match[1]:
                self._slots.release()  # the stored part already holds these bytes
                return
        # Created and sent by a task, so that a write never stops between taking a
        # part's bytes and handing them over.
        task = asyncio.create_task(self._send_part(buf), name=f"rheo_nb part {buf.number}")
        self._tasks.add(task)
        task.add_done_callback(self._part_done)

    async def _created(self) -> Record:
        """The multipart upload, created (with its record) by the first part to need it."""
        async with self._creating:
            if self.record is None:
                creation = asyncio.ensure_future(self._create())
                try:
                    await asyncio.shield(creation)
                except asyncio.CancelledError:
                    # Its requests are on their way: let them land, so that the upload
                    # and its record are known (kept, or aborted by whoever cancelled).
                    await asyncio.wait((creation,))
                    raise
            assert self.record is not None
            return self.record

    async def _create(self) -> None:
        meta = self._metadata()
        resp = await self.bucket.call("create_multipart_upload", self.key, Metadata=meta)
        upload_id = str(resp["UploadId"])
        self.bucket.started(self.key)
        record = Record(
            upload_id,
            self.key,
            self.url,
            self.validator or "",
            self.total,
            self.part_size,
            str(self.expected) if self.expected else None,
        )
        try:
            # Written even without a validator (no resume then): clean() knows its uploads
            # by it.
            await self.bucket.call(
                "put_object",
                record_key(self.key, upload_id),
                Body=record.to_json(),
                ContentType="application/json",
            )
        except BaseException:
            # The record's PUT failed, perhaps after it landed: neither the upload nor its
            # record may outlive this.
            with contextlib.suppress(Exception):
                await self.bucket.abort(record)
            raise
        self.record = record

    def _metadata(self) -> dict[str, str]:
        meta = {f"{_META}source": self.url}
        if self.expected is not None:
            meta[self.expected.algorithm] = self.expected.hexdigest
        return meta

    async def _send_part(self, buf: _Buffer) -> None:
        size = len(buf)
        buf.data.seek(0)
        try:
            record = await self._created()
            resp = await self.bucket.call(
                "upload_part",
                self.key,
                UploadId=record.upload_id,
                PartNumber=buf.number,
                Body=buf.data,
                ContentLength=size,
            )
            self.parts[buf.number] = Part(str(resp["ETag"]), size)
        finally:
            buf.data = io.BytesIO()
            self._slots.release()

    def _part_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self._failure is None:
            self._failure = task.exception()

    async def _check(self) -> None:
        """Raise what went wrong in a part upload, if anything did."""
        failure = self._failure
        if failure is None:
            return
        if isinstance(failure, DestinationError):
            await self._lost(failure)
        raise failure

    async def _lost(self, error: DestinationError) -> None:
        """When the upload is gone, say why: completed by another writer, or aborted."""
        if self.record is None or not await self.bucket._upload_gone(self.record):
            return
        present = await self.bucket.existing(self.key, size=self.total, expected=self.expected)
        if present is not None and self.total is not None:
            raise AlreadyComplete(present) from None
        raise TransferError(
            self.where, "the multipart upload was aborted by another writer, or expired"
        ) from None

    # --- the end ---------------------------------------------------------------------------

    async def verify(self) -> int:
        """Send the last part, wait for the parts in flight, then check length and hash;
        the size."""
        if self.total is None and self._open:  # the stream's end says where the file ends
            last = max(self._open)
            if self.record is not None or self._tasks or self.parts or last > 1:
                self._part_full(self._open.pop(last))
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        await self._check()
        stored = dict(self.parts)
        for number, buf in self._open.items():
            if len(buf):
                stored[number] = Part("", len(buf))  # the one-request whole file
        size = 0
        number = 1
        while number in stored:
            size += stored[number].size
            number += 1
        if len(stored) != number - 1:
            raise IntegrityError(self.where, f"part {number} is missing")
        if self.total is not None and size != self.total:
            raise IntegrityError(
                self.where, f"{fmt_size(size)} uploaded, {fmt_size(self.total)} expected"
            )
        if self._hasher is not None and self.expected is not None:
            if self._hashed != size:
                raise IntegrityError(
                    self.where, f"only {self._hashed} of {size} bytes were hashed in order"
                )
            digest = self._hasher.hexdigest()
            if digest != self.expected.hexdigest:
                raise IntegrityError(
                    self.where,
                    f"{self.expected.algorithm} mismatch: expected {self.expected.hexdigest}, "
                    f"got {digest}",
                )
        return size

    async def commit(self) -> int:
        """Verify, then make the object appear at its key; its size.

        Raises :class:`AlreadyComplete` when another writer completed this upload first.
        """
        size = await self.verify()
        if self.record is None:
            body = b"".join(b.data.getvalue() for b in self._open.values())
            await self.bucket.put(self.key, body, self._metadata())
            self._release_open()
            return size
        parts = [
            {"PartNumber": n, "ETag": self.parts[n].etag} for n in range(1, len(self.parts) + 1)
        ]
        try:
            await self.bucket.call(
                "complete_multipart_upload",
                self.key,
                UploadId=self.record.upload_id,
                MultipartUpload={"Parts": parts},
            )
        except DestinationError as exc:
            await self._lost(exc)
            raise
        await self._forget_others()
        return size

    async def _forget_others(self) -> None:
        """Abort earlier rheo_nb uploads of this key and source (the record included): the
        object they were for is now complete."""
        assert self.record is not None
        with contextlib.suppress(DestinationError):
            await self.bucket.call("delete_object", record_key(self.key, self.record.upload_id))
        self.record = None  # completed: nothing of it is left to abort
        for record in await self.bucket.records(self.key):
            if record.url == self.url:
                await self.bucket.abort(record)

    async def discard(self) -> None:
        """The download failed for good: abort the upload, so nothing is left to pay for."""
        await self._stop_tasks()
        if self.record is not None:
            await self.bucket.abort(self.record)
            self.record = None

    async def keep(self) -> None:
        """Stopped (cancelled, or the stream broke): leave the upload and its record for
        the next attempt or run.

        Parts already full finish uploading (for at most :data:`KEEP_WAIT` seconds), so
        their bytes need not be fetched again; a part cut off is not stored. The bytes of
        parts still filling are dropped.
        """
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=KEEP_WAIT)
        await self._stop_tasks()

    async def _stop_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        self._release_open()

    def _release_open(self) -> None:
        for _ in self._open:
            self._slots.release()
        self._open.clear()


# --- the destination of one download ------------------------------------------------------------


class ObjectDestination:
    """A download into a bucket (:class:`~rheo_nb.destination.Destination`): its bytes go
    into a :class:`MultipartUpload` of the final key, completed only once verified.

    Nothing here touches the local disk: the resume record is in the bucket, so any
    machine with the credentials (a cluster worker, a new notebook server) can continue.
    """

    def __init__(
        self,
        bucket: Bucket,
        path: ObjectPath,
        url: str,
        expected: ExpectedHash | None,
        *,
        parts_in_flight: int = PARTS_IN_FLIGHT,
    ) -> None:
        self.bucket, self.path, self.url, self.expected = bucket, path, url, expected
        self.parts_in_flight = parts_in_flight
        self.up = self._fresh()
        self._dropped = 0  # bytes of an upload given up (a rename…), for the next restart
        #: The upload continues from another source, checked by the hash: that source's
        #: validator differs, and may.
        self._carried = False
        self._split = False  # ranges were written: what is stored is not one prefix
        #: The id of the upload an earlier run kept, found by the claim.
        self._kept: str | None = None

    @property
    def keep_failed(self) -> bool:
        """Whether a download that failed for good after transient errors keeps its upload.

        One this run started is aborted: an incomplete upload is billed and invisible in
        listings, unlike a local partial. One an earlier run kept (a cancel) is that run's
        resumable partial, and stays for the run after this one, as a local partial does.
        """
        record = self.up.record
        return record is not None and record.upload_id == self._kept

    def _fresh(self) -> MultipartUpload:
        return MultipartUpload(
            self.bucket, self.path.key, url_key(self.url), self.expected, self.parts_in_flight
        )

    @property
    def size(self) -> int:
        return self.up.position

    def alignment(self, total: int) -> int | None:
        # The in-order hash would see only the first range: the rest would have to be
        # fetched twice (see the object-storage docs for the figures). One stream then.
        if self.expected is not None:
            return None
        return part_size_for(total, self.bucket.part_size)

    async def claim(self, *, overwrite: bool) -> Skip | None:
        if not overwrite and (skip := await self._present(self.path)) is not None:
            return skip
        self.up = await self.bucket.upload(
            self.path.key,
            url=self.url,
            expected=self.expected,
            parts_in_flight=self.parts_in_flight,
        )
        self._kept = self.up.record.upload_id if self.up.record is not None else None
        return None

    async def _present(self, path: ObjectPath, note: str = "") -> Skip | None:
        size = await self.bucket.existing(path.key, expected=self.expected)
        if size is None:
            return None
        how = f", {self.expected.algorithm} verified" if self.expected is not None else ""
        return Skip(size, f"already downloaded{how}{note}")

    async def rename(self, name: str, *, overwrite: bool) -> Skip | None:
        """The key becomes ``name`` in the same folder. An upload belongs to one key: one
        the claim found under the URL's name cannot become the server's, so it is given
        up and the file fetched again (once: the next attempt asks for the new key)."""
        target = self.path = self.path.with_name(name)
        if not overwrite and (skip := await self._present(target, f" as {name}")) is not None:
            return skip
        old = self.up
        if old.record is not None or old.position:
            self._dropped = old.held
            await old.discard()
            self.up = self._fresh()
            raise Restart(f"the server names it {name}; the upload kept was for another name")
        self.up = await self.bucket.upload(
            target.key, url=self.url, expected=self.expected, parts_in_flight=self.parts_in_flight
        )
        return None

    async def resumable(
        self, url: str, sources: tuple[str, ...], *, no_split: bool
    ) -> Resume | None:
        up = self.up
        if up.failed or self._split:
            # A part was lost, or ranges were written out of order: continue after what
            # is stored, as a later run would.
            self._split = False
            await up.settle()
        if up.record is None and up.position == 0:
            return None
        if not up.validator:
            raise Restart("the server gave no validator to continue the upload with")
        validator = up.validator
        self._carried = False
        if up.url != url_key(url):  # the upload came from another of the file's sources
            if up.url not in {url_key(s) for s in sources}:
                raise Restart("the upload kept is of another file")
            if self.expected is not None:
                validator = ""  # the hash checks the result: no If-Range across sources
                self._carried = True
            elif not validator.startswith('"'):
                raise Restart("the upload kept came from another source, without a strong ETag")
        split = None if no_split or self.expected is not None else self._stored_split()
        if split is not None:
            seg = split.first_missing()
            assert seg is not None
            return Resume((seg.position, seg.end - 1), validator, up.total, split)
        return Resume((up.position, None), validator, up.total)

    def _folder(self, folder: PurePosixPath | None) -> str | None:
        """The full key of an extraction folder given relative to the call's prefix."""
        return None if folder is None else self.bucket.key(folder.as_posix())

    async def extracted(self, folder: PurePosixPath | None) -> tuple[Skip, ObjectPath] | None:
        from .objextract import recorded

        found = await recorded(self.bucket, self.path, self._folder(folder), self.expected)
        if found is None:
            return None
        target, nbytes = found
        verified = f", {self.expected.algorithm} verified" if self.expected is not None else ""
        return Skip(nbytes, "already downloaded and extracted" + verified), target

    async def extract(self, folder: PurePosixPath | None, how: Unpacking) -> ObjectPath | None:
        """Unpack the archive object into keys under the folder (see
        :mod:`rheo_nb.objextract`)."""
        from .objextract import extract_object

        return await extract_object(
            self.bucket,
            self.path,
            self._folder(folder),
            how,
            parts_in_flight=self.parts_in_flight,
        )

    def _stored_split(self) -> Split | None:
        """The split that fetches only the parts missing from the upload, when parts past
        the first gap are stored (a segmented download was stopped); else None."""
        up = self.up
        total, size = up.total, up.part_size
        if total is None or not any(n * size > up.position for n in up.parts):
            return None
        segments: list[Segment] = []
        for start in range(0, total, size):
            end = min(start + size, total)
            done = end - start if start // size + 1 in up.parts else 0
            last = segments[-1] if segments else None
            if last is not None and (last.done == last.size) == (done > 0):
                last.end, last.done = end, last.done + done  # a run of stored or missing
            else:
                segments.append(Segment(start, end, done))
        if all(s.remaining == 0 for s in segments):
            return None
        assert up.validator is not None
        return Split(segments, total, up.validator, up.url, ranges_ok=True, align=size)

    async def restart(self) -> int:
        dropped, self._dropped = self.up.held + self._dropped, 0
        await self.up.start(None, None, continuing=False)
        return dropped

    async def stream(self, url: str, answer: Answer) -> Sink:
        up = self.up
        if answer.decision is Decision.FULL:
            if up.joinable(answer.validator, answer.total):
                up.from_start()
            else:
                await up.start(answer.validator, answer.total, continuing=False)
        else:
            total = up.position if answer.decision is Decision.COMPLETE else answer.total
            await self._continue(answer.validator, total)
        return _UploadSink(up)

    async def _continue(self, validator: str | None, total: int | None) -> None:
        """A response continues the upload kept; restart when it cannot."""
        up = self.up
        if self._carried and validator is not None and total == up.total:
            up.validator = validator  # another source of the same file: the hash decides
        held = up.held
        if not await up.start(validator, total, continuing=True):
            self._dropped += held  # aborted already: the restart reports what went
            raise Restart("the upload kept does not match the file any more")

    async def open_split(self, split: Split) -> None:
        up = self.up
        self._split = True
        if split.done:  # the parts missing from an upload found (:meth:`resumable`)
            await self._continue(split.validator, split.total)
        elif up.joinable(split.validator, split.total):
            up.from_start()
        else:
            await up.start(split.validator, split.total, continuing=False)

    def range_sink(self, split: Split, seg: Segment) -> Sink:
        return _UploadRange(self.up, seg)

    async def save(self, split: Split) -> None:
        """Nothing to write: S3 lists the parts stored (``ListParts``)."""

    async def commit(self, tail: list[bytes], total: int | None, split: Split | None) -> int:
        up = self.up
        if tail:
            await up.append(tail)
        with _completed_elsewhere():
            return await up.commit()

    async def stop(self, *, keep: bool) -> None:
        if keep:
            await self.up.keep()
        else:
            await self.up.discard()


@contextlib.contextmanager
def _completed_elsewhere() -> Iterator[None]:
    """Another writer completed the object while this one wrote it: a skip, not an error
    (found at the commit, or at a write once the upload it fed was aborted by that
    writer's completion)."""
    try:
        yield
    except AlreadyComplete as done:
        raise Present(Skip(done.size, "completed by another writer at the same time")) from None


class _UploadSink:
    """The stream loop's sink for a whole body: the next parts of the upload."""

    keep_partial = True

    def __init__(self, up: MultipartUpload) -> None:
        self.up = up

    def room(self) -> None:
        return None

    async def write(self, chunks: list[bytes]) -> None:
        with _completed_elsewhere():
            await self.up.append(chunks)


class _UploadRange:
    """The stream loop's sink for one range of a split; each range starts on a part."""

    keep_partial = True

    def __init__(self, up: MultipartUpload, seg: Segment) -> None:
        self.up, self.seg = up, seg

    def room(self) -> int:
        return self.seg.end - self.seg.position

    async def write(self, chunks: list[bytes]) -> None:
        with _completed_elsewhere():
            await self.up.write_at(self.seg.position, chunks, self._done)

    def _done(self, n: int) -> None:
        self.seg.done += n


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def destination_of(dest: str | os.PathLike[str]) -> Path | ObjectPath:
    """A local folder, or the ``s3://`` URL of a bucket (never through ``pathlib``, which
    would make ``s3://b`` into ``s3:/b``). :raises OptionError: another kind of URL."""
    if isinstance(dest, str) and _URL.match(dest):
        return ObjectPath.of(dest)
    return Path(dest)
