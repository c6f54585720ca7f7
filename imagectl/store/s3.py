"""A catalogue in an S3 bucket (AWS S3, Ceph RGW, SeaweedFS, MinIO…) through boto3.

``s3://BUCKET/PREFIX`` names the catalogue; endpoint, credentials and region come from the standard AWS settings
(``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``,
``AWS_REGION``, the shared config files), so whatever the ``aws`` CLI reaches, imagectl reaches. Every botocore
exception is turned into an :class:`~imagectl.errors.ImagectlError` here, at the boundary, with a one-line message
that names the bucket and key but never a credential.

S3 has no locks: publishers serialise by compare-and-swap, with the conditional writes ``If-None-Match: *``
(:meth:`S3Store.write_new`) and ``If-Match: <etag>`` (:meth:`S3Store.write_if_match`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import io
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import boto3.exceptions
import botocore.config
import botocore.exceptions
import urllib3.exceptions

from imagectl import __version__
from imagectl.errors import (
    CatalogueStateError,
    DownloadError,
    ImagectlError,
    InvalidInputError,
    KeyProblemError,
    LocalIOError,
)
from imagectl.http import safe_url
from imagectl.store.base import (
    CHUNK,
    POINTER_META,
    ObjectEntry,
    ObjectMissingError,
    ObjectTooLargeError,
    Pace,
    RangeStream,
    Store,
    paced,
    pointer_target,
)
from imagectl.store.digest import UPLOAD_PART_SIZE, FileChangedError, FileDigest, composite_checksum

__all__ = ["S3Stats", "S3Store", "TransferSettings"]

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_DEFAULT_REGION = "us-east-1"
METADATA_REQUESTS = 8  # metadata reads at once (S3Store.concurrent_requests)
_CRED_HINT = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) for this endpoint"
# Error codes that mean "these credentials are wrong", as opposed to "these credentials may not do that".
_BAD_CREDENTIALS = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "TokenRefreshRequired"}
)
# A conditional write lost: 412 is the answer; AWS answers 409 while a competing conditional write is in flight.
_WRONG_REGION = frozenset({"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"})
_LOST_RACE = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
_CONDITION_HEADERS = "ImagectlConditionHeaders"  # private call parameter, see _install_header_hook


# Server-side copies (the target files of catalogue/README.md §6): one CopyObject up to COPY_MAX bytes, else
# UploadPartCopy parts of COPY_PART bytes, `concurrency` at a time (S3 allows parts of 5 MiB..5 GiB and one
# CopyObject up to 5 GiB). A server copies parts in parallel much faster than one object end to end
# (bench/targets.py: SeaweedFS, 256 MiB).
COPY_MAX = 64 << 20  # bytes
COPY_PART = 64 << 20  # bytes


def _pointed(blob: str, head: dict[str, Any]) -> str | None:
    """The target file the object ``head`` describes points at, if it is an image pointer (see base.py)."""
    meta = head.get("Metadata")
    return pointer_target(
        blob, int(head.get("ContentLength", -1)), meta.get(POINTER_META) if isinstance(meta, dict) else None
    )


def _matches(head: dict[str, Any], digest: FileDigest) -> bool:
    """Whether the object ``head`` describes holds the digest's bytes, by size and, where the two can be
    compared, the stored SHA-256 checksum (whole-object, or composite over the same parts)."""
    if int(head.get("ContentLength", -1)) != digest.size:
        return False
    checksum = head.get("ChecksumSHA256")
    if not checksum:
        return True
    if "-" not in str(checksum):
        return str(checksum) == digest.sha256_b64
    count = str(checksum).rsplit("-", 1)[1]
    if digest.parts and count == str(len(digest.parts)):
        return str(checksum) == composite_checksum(digest.parts)
    return True  # another part layout: its composite checksum cannot be compared with ours


@dataclass
class TransferSettings:
    """How large files are uploaded (sizes in bytes)."""

    multipart_threshold: int = 64 << 20  # files at least this large go up in parts
    part_size: int = UPLOAD_PART_SIZE  # size of each part (S3 allows 5 MiB..5 GiB, at most 10,000 parts)
    # Parts in flight at once. bench/publish.py, 1 GiB to SeaweedFS on 2 cores: 8 parts of 16 MiB in flight cost
    # the server ~10% more CPU and the upload ~9% more time than 4 (or 8 of 8 MiB): what a server buffers at
    # once, not the number of connections, is what counts. 4 is also rclone's default; --s3-concurrency raises it
    # for a link where one connection is slow (a far region).
    concurrency: int = 4
    # An image body at least this long goes as UNSIGNED-PAYLOAD (S3Store._send_checked); a shorter one is hashed for
    # SigV4 in less time than building the twin client that sends unsigned takes (~4 ms).
    unsigned_min: int = 8 << 20


@dataclass
class S3Stats:
    """Counters of what this store sent, fed by the bytes actually transferred (thread-safe)."""

    bytes_sent: int = 0  # object bytes in PUT and UploadPart bodies
    parts: int = 0  # multipart parts uploaded
    files: int = 0  # upload_file calls that sent the file
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, *, nbytes: int = 0, parts: int = 0, files: int = 0) -> None:
        with self._lock:
            self.bytes_sent += nbytes
            self.parts += parts
            self.files += files


class _ShortRead(OSError):
    """The file ended before the part did (it was truncated while being published)."""


class _FileSlice(io.RawIOBase):
    """A read-only, seekable view of ``length`` bytes of an open file from ``offset``, read with ``pread`` (so
    parts uploaded by parallel threads share one descriptor); bytes read are counted in ``stats``."""

    def __init__(self, fd: int, offset: int, length: int, stats: S3Stats) -> None:
        super().__init__()
        self._fd, self._offset, self._length, self._pos, self._stats = fd, offset, length, 0, stats

    def __len__(self) -> int:
        return self._length

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._stats.add(nbytes=-self._pos)  # a retried part is counted once
        self._pos = max(0, min(self._length, base + pos))
        self._stats.add(nbytes=self._pos)
        return self._pos

    def read(self, size: int = -1) -> bytes:
        want = self._length - self._pos if size is None or size < 0 else min(size, self._length - self._pos)
        if want <= 0:
            return b""
        data = os.pread(self._fd, want, self._offset + self._pos)
        if not data:
            raise _ShortRead(f"file ended at {self._offset + self._pos}")
        self._pos += len(data)
        self._stats.add(nbytes=len(data))
        return data

    def readinto(self, buf: Any) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)


def _changed(path: str, digest: FileDigest, how: str) -> FileChangedError:
    return FileChangedError(
        f"{path} changed while it was being published ({how}; it had {digest.size} bytes with sha256 "
        f"{digest.sha256[:16]}… when hashed); nothing was stored",
        hint="publish a file nothing is writing to (wait for the build to finish)",
    )


def _content_type(key: str) -> str:
    return "application/json" if key.endswith(".json") else "application/octet-stream"


def _split(url_path: str) -> str:
    """Normalise a key prefix: no leading ``/``, one trailing ``/`` unless empty."""
    prefix = url_path.strip("/")
    return prefix + "/" if prefix else ""


class S3Store(Store):
    """The catalogue under ``s3://bucket/prefix/``."""

    @property
    def concurrent_requests(self) -> int:  # type: ignore[override]
        """Small requests (metadata) at once: latency-bound, so at least METADATA_REQUESTS whatever the parts of
        an upload (boto3 clients are thread-safe; the pool holds that many + 2)."""
        return max(METADATA_REQUESTS, self.transfer.concurrency)

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        timeout: float = 30.0,
        retries: int = 3,
        transfer: TransferSettings | None = None,
        client: Any = None,
    ) -> None:
        """Raises InvalidInputError for a bad bucket name, KeyProblemError for an unknown AWS profile.

        ``client`` (a boto3 S3 client) replaces the one built from the AWS settings; for tests and tools that
        already hold one.
        """
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._\-]{1,61}[A-Za-z0-9]", bucket):
            raise InvalidInputError(f"invalid S3 bucket name {bucket!r}")
        self.bucket = bucket
        self.prefix = _split(prefix)
        self.url = f"s3://{bucket}/{self.prefix}"
        self.transfer = transfer or TransferSettings()
        self.pace = Pace(window=max(timeout, 1.0))
        self.stats = S3Stats()
        self.list_page_size = 1000  # keys per ListObjectsV2 request (the S3 maximum)
        self.client: Any = client
        self._make_twin: Callable[[], Any] | None = None  # builds the unsigned twin; None: no twin
        if client is None:
            self.client, self._make_twin = _make_client(timeout, retries, self.concurrent_requests)
        self._twin: Any = None
        self._twin_lock = threading.Lock()
        # Whether this server confirms the SHA-256 checksums of image bytes sent without a signed payload hash
        # (see _send_checked): None until it answers the first, then True, or False for "sign every payload".
        self.unsigned_payloads: bool | None = None if client is None else False
        self.endpoint = safe_url(self.client.meta.endpoint_url)
        members = self.client.meta.service_model.operation_model("PutObject").input_shape.members
        self._native_conditions = "IfMatch" in members and "IfNoneMatch" in members
        if not self._native_conditions:
            _install_header_hook(self.client)
        self.client.meta.events.register(
            "after-call.s3.UploadPart", self._count_part, unique_id=f"imagectl-count-parts-{id(self)}"
        )
        self.client.meta.events.register("before-send.s3.PutObject", _no_expect_on_empty, unique_id="imagectl-expect")

    def _count_part(self, http_response: Any = None, **kwargs: Any) -> None:
        if http_response is not None and http_response.status_code < 300:
            self.stats.add(parts=1)

    # -- keys and errors ----------------------------------------------------------------------------------
    def _key(self, key: str) -> str:
        parts = key.split("/")
        if key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ObjectMissingError(f"invalid object key {key!r}")
        return self.prefix + key

    def _error(self, exc: Exception, action: str, key: str | None) -> ImagectlError:
        """The ImagectlError a botocore/boto3 exception means for the user; one line, no secrets."""
        what = f"s3://{self.bucket}/{self.prefix}{key}" if key is not None else self.url
        if isinstance(exc, botocore.exceptions.NoCredentialsError):
            return KeyProblemError(f"no S3 credentials found for {self.shown}", hint=_CRED_HINT)
        if isinstance(exc, botocore.exceptions.PartialCredentialsError | botocore.exceptions.ProfileNotFound):
            return KeyProblemError(f"S3 credentials: {exc}", hint=_CRED_HINT)
        if isinstance(exc, botocore.exceptions.ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", "?"))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket":
                return CatalogueStateError(
                    f"S3 bucket {self.bucket} does not exist at {self.endpoint}",
                    hint="create the bucket first, or check AWS_ENDPOINT_URL",
                )
            if code in ("NoSuchKey", "404", "NotFound"):
                return ObjectMissingError(f"{key or what} not found in {self.shown}")
            if code in _BAD_CREDENTIALS:
                return KeyProblemError(f"S3 at {self.endpoint} rejected the credentials ({code})", hint=_CRED_HINT)
            if code in ("AccessDenied", "403", "Forbidden") or status == 403:
                return KeyProblemError(
                    f"S3 at {self.endpoint} refused to {action} {what} (HTTP 403: wrong credentials or no permission)",
                    hint="check the credentials and the bucket policy",
                )
            hint = "set AWS_REGION to the bucket's region" if code in _WRONG_REGION else None
            return DownloadError(f"S3 {action} of {what} failed: {code} (HTTP {status})", hint=hint)
        if isinstance(exc, botocore.exceptions.ParamValidationError):
            return InvalidInputError(f"invalid S3 request for {what}: {exc}")
        if isinstance(
            exc,
            botocore.exceptions.EndpointConnectionError
            | botocore.exceptions.ConnectTimeoutError
            | botocore.exceptions.ProxyConnectionError,
        ):
            return DownloadError(f"cannot reach S3 at {self.endpoint}: {type(exc).__name__}")
        return DownloadError(f"S3 {action} of {what} failed: {type(exc).__name__}")

    @contextlib.contextmanager
    def _boundary(self, action: str, key: str | None) -> Iterator[None]:
        try:
            yield
        except (
            botocore.exceptions.BotoCoreError,
            botocore.exceptions.ClientError,
            boto3.exceptions.Boto3Error,
            urllib3.exceptions.HTTPError,
        ) as e:
            raise self._error(e, action, key) from e

    # -- reading ------------------------------------------------------------------------------------------
    def _get(self, key: str, offset: int = 0) -> dict[str, Any]:
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key)}
        if offset:
            args["Range"] = f"bytes={offset}-"
        with self._boundary("read", key):
            try:
                resp: dict[str, Any] = self.client.get_object(**args)
            except botocore.exceptions.ClientError as e:
                if not offset or e.response.get("Error", {}).get("Code") != "InvalidRange":
                    raise
                # Offset at or past the end: answer like a server that ignores Range (the whole object from 0);
                # the caller restarts, and finds out for itself whether the object is shorter than it expects.
                del args["Range"]
                resp = self.client.get_object(**args)
        return resp

    def _chunks(self, body: Any, key: str, length: int | None) -> Iterator[bytes]:
        # read1 of the underlying urllib3 response returns what one socket read brought, so the pace check sees
        # a dripping endpoint at once (StreamingBody.read(CHUNK) would wait for a full CHUNK).
        raw = getattr(body, "_raw_stream", None)

        def blocks() -> Iterator[bytes]:
            if raw is not None and hasattr(raw, "read1"):
                got = 0
                while block := raw.read1(CHUNK):
                    got += len(block)
                    yield block
                if length is not None and got < length:  # what StreamingBody would have checked
                    raise DownloadError(f"S3 body of {key} ended after {got} of {length} bytes")
            else:
                yield from body.iter_chunks(CHUNK)

        with self._boundary("read", key):
            yield from paced(blocks(), self.pace, f"s3://{self.bucket}/{self.prefix}{key}")

    def _read_body(self, resp: dict[str, Any], key: str, max_length: int) -> bytes:
        body = resp["Body"]
        with contextlib.closing(body):
            if resp.get("ContentLength", 0) > max_length:
                raise ObjectTooLargeError.at(key, max_length)
            buf = bytearray()
            for chunk in self._chunks(body, key, resp.get("ContentLength")):
                buf += chunk
                if len(buf) > max_length:
                    raise ObjectTooLargeError.at(key, max_length)
            return bytes(buf)

    def read(self, key: str, max_length: int) -> bytes:
        return self._read_body(self._get(key), key, max_length)

    def read_versioned(self, key: str, max_length: int) -> tuple[bytes, str]:
        """The object and its ETag, from one GET (so the two always belong together)."""
        resp = self._get(key)
        return self._read_body(resp, key, max_length), str(resp["ETag"])

    @contextlib.contextmanager
    def open_range(self, key: str, offset: int = 0) -> Iterator[RangeStream]:
        resp = self._get(key, offset)
        body = resp["Body"]
        with contextlib.closing(body):
            start, total = 0, resp.get("ContentLength")
            content_range = resp.get("ContentRange")
            if content_range:
                m = _CONTENT_RANGE.match(content_range)
                if not m:
                    raise DownloadError(f"unparseable Content-Range for {key} from {self.endpoint}")
                start = int(m.group(1))
                total = int(m.group(3)) if m.group(3) != "*" else None
            yield RangeStream(offset=start, chunks=self._chunks(body, key, resp.get("ContentLength")), total=total)

    def exists(self, key: str) -> bool:
        """Whether the key exists (HEAD). A 403 raises: it may hide a missing key, or mean wrong credentials."""
        with self._boundary("check", key):
            try:
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            except botocore.exceptions.ClientError as e:
                if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                    return False
                raise
        return True

    def _pages(self, **args: str) -> Iterator[dict[str, Any]]:
        """The pages of one ListObjectsV2 listing, continuation token after token. Not botocore's paginator: its
        model file costs each new client ~12 ms to load, which a publish into a binned name paid for one listing.
        A server repeating a token (it would page forever) is an error, as with the paginator."""
        seen: set[str] = set()
        more: dict[str, str] = {}
        while True:
            page: dict[str, Any] = self.client.list_objects_v2(
                Bucket=self.bucket, MaxKeys=self.list_page_size, **args, **more
            )
            yield page
            token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
            if not token:
                return
            if token in seen:
                raise DownloadError(f"{self.shown}: the S3 server repeated a listing's continuation token")
            seen.add(str(token))
            more = {"ContinuationToken": str(token)}

    def list(self, prefix: str) -> Iterator[str]:
        """Keys under ``prefix`` (ListObjectsV2, page by page); dot-files are skipped as on a directory."""
        for entry in self.list_entries(prefix):
            yield entry.key

    def list_children(self, prefix: str, start: str = "") -> set[str]:
        """ListObjectsV2 of ``prefix + start`` with delimiter ``/``: its common prefixes, page by page."""
        full = self.prefix + _split(prefix)
        out = set()
        with self._boundary("list", prefix):
            for page in self._pages(Prefix=full + start, Delimiter="/"):
                for common in page.get("CommonPrefixes", ()):
                    name = str(common.get("Prefix", ""))[len(full) :].rstrip("/")
                    if name and "/" not in name and not name.startswith("."):
                        out.add(name)
        return out

    def list_entries(self, prefix: str, *, hidden: bool = False) -> Iterator[ObjectEntry]:
        """Keys under ``prefix`` with size and age (from LastModified, so a skewed local clock skews ages)."""
        full = self.prefix + _split(prefix)
        with self._boundary("list", prefix):
            for page in self._pages(Prefix=full):
                now = time.time()
                for obj in page.get("Contents", ()):
                    key = str(obj["Key"])[len(self.prefix) :]
                    name = key.rsplit("/", 1)[-1]
                    if name and (hidden or not name.startswith(".")):
                        age = max(0.0, now - obj["LastModified"].timestamp())
                        yield ObjectEntry(key=key, size=int(obj["Size"]), age=age)

    def abort_stale_uploads(self, older_than: float, *, dry_run: bool = False) -> tuple[str, ...]:
        aborted = []
        with self._boundary("list uploads", ""):
            pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=self.prefix)
            stale = [
                u
                for page in pages
                for u in page.get("Uploads", ())
                if time.time() - u["Initiated"].timestamp() >= older_than
            ]
        for u in stale:
            key = str(u["Key"])[len(self.prefix) :]
            if not dry_run:
                with self._boundary("abort upload", key):
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=u["Key"], UploadId=u["UploadId"])
            aborted.append(key)
        return tuple(aborted)

    # -- writing ------------------------------------------------------------------------------------------
    def _put(self, key: str, data: bytes, conditions: dict[str, str], metadata: dict[str, str] | None = None) -> bool:
        """PUT ``data`` (with user ``metadata``); with ``conditions`` (``IfMatch``/``IfNoneMatch``) return False
        when one fails."""
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self._key(key),
            "Body": data,
            "ContentType": _content_type(key),
        }
        if metadata:
            args["Metadata"] = metadata
        if self._native_conditions:
            args.update(conditions)
        elif conditions:
            names = {"IfMatch": "If-Match", "IfNoneMatch": "If-None-Match"}
            args[_CONDITION_HEADERS] = {names[k]: v for k, v in conditions.items()}
        with self._boundary("write", key):
            try:
                self.client.put_object(**args)
            except botocore.exceptions.ClientError as e:
                code = e.response.get("Error", {}).get("Code")
                missing = code == "NoSuchKey" and "IfMatch" in conditions  # AWS: If-Match on an absent key
                if not conditions or not (code in _LOST_RACE or missing):
                    raise
                if e.response.get("ResponseMetadata", {}).get("RetryAttempts", 0) and self._holds(key, data):
                    # botocore retried after a lost response; the first attempt is what made the condition fail
                    pass
                else:
                    return False
        self.stats.add(nbytes=len(data))
        return True

    def _holds(self, key: str, data: bytes) -> bool:
        """Whether ``key`` now holds exactly ``data`` (by ETag, the MD5 of a single-part upload)."""
        try:
            etag = self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ETag"]
        except botocore.exceptions.ClientError:
            return False
        return str(etag).strip('"') == hashlib.md5(data, usedforsecurity=False).hexdigest()

    def write(self, key: str, data: bytes) -> None:
        self._put(key, data, {})

    def write_new(self, key: str, data: bytes) -> bool:
        """Create ``key`` with ``If-None-Match: *``; False when it exists (412)."""
        return self._put(key, data, {"IfNoneMatch": "*"})

    def write_if_match(self, key: str, data: bytes, tag: str) -> bool:
        """Replace ``key`` with ``If-Match: <tag>``; False when its ETag changed or it is gone (412)."""
        return self._put(key, data, {"IfMatch": tag})

    @property
    def part_size(self) -> int:  # type: ignore[override]
        return self.transfer.part_size

    def _stored(self, key: str, digest: FileDigest) -> bool | None:
        """Whether ``key`` holds the digest's bytes: None if absent, False if its size or stored SHA-256 checksum
        says otherwise. An object without a stored checksum (uploaded by an older imagectl, or by a server that
        keeps none) is judged by its size alone."""
        head = self._head(key)
        return None if head is None else _matches(head, digest)

    def upload_file(self, key: str, path: str, digest: FileDigest) -> bool:
        """Upload exactly ``digest.size`` bytes of ``path`` unless ``key`` already holds them.

        Every request carries the SHA-256 the bytes must have (``ChecksumSHA256``): of the whole object for a
        single PUT, of each part for a multipart upload (parts in parallel, read straight from the file). The
        server checks it and refuses (``BadDigest``) bytes that differ — a file changed since it was hashed — and
        the upload is then aborted: nothing is stored under the key, FileChangedError is raised. A key holding
        another size or checksum is overwritten. Raises LocalIOError if ``path`` is unreadable.
        """
        if self._stored(key, digest):
            return False
        self._upload(key, path, digest)
        return True

    def _upload(self, key: str, path: str, digest: FileDigest) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise LocalIOError(f"cannot read {path}: {e.strerror or e}") from e
        try:
            if os.fstat(fd).st_size < digest.size:
                raise _changed(path, digest, "it is shorter now")
            if digest.size < self.transfer.multipart_threshold or len(digest.parts) <= 1:
                self._put_whole(key, fd, path, digest)
            else:
                self._put_parts(key, fd, path, digest)
        finally:
            os.close(fd)
        self.stats.add(files=1)

    def _put_whole(self, key: str, fd: int, path: str, digest: FileDigest) -> None:
        data = os.pread(fd, digest.size, 0)
        if len(data) != digest.size or hashlib.sha256(data).hexdigest() != digest.sha256:
            raise _changed(path, digest, "its bytes differ")
        args = {"Bucket": self.bucket, "Key": self._key(key), "Body": data, "ContentType": _content_type(key)}
        with self._boundary("upload", key):
            try:
                self._send_checked("put_object", lambda: args, digest.sha256_b64, len(data))
            except botocore.exceptions.ClientError as e:
                if e.response.get("Error", {}).get("Code") == "BadDigest":
                    raise _changed(path, digest, "the server received other bytes") from None
                raise
        self.stats.add(nbytes=len(data))

    def _put_parts(self, key: str, fd: int, path: str, digest: FileDigest) -> None:
        if digest.part_size != self.transfer.part_size:
            raise ValueError(f"digest has {digest.part_size}-byte parts, this store uploads {self.part_size}")
        full = self._key(key)
        with self._boundary("upload", key):
            upload = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=full, ContentType=_content_type(key), ChecksumAlgorithm="SHA256"
            )
        upload_id = str(upload["UploadId"])

        def send(index: int) -> dict[str, Any]:
            offset = index * digest.part_size
            checksum = digest.part_b64(index)
            part = {"Bucket": self.bucket, "Key": full, "UploadId": upload_id, "PartNumber": index + 1}
            length = min(digest.part_size, digest.size - offset)

            def args() -> dict[str, Any]:  # a fresh view of the part's bytes for each attempt
                return part | {"Body": _FileSlice(fd, offset, length, self.stats)}

            resp = self._send_checked("upload_part", args, checksum, length)
            return {"PartNumber": index + 1, "ETag": resp["ETag"], "ChecksumSHA256": checksum}

        try:
            with self._boundary("upload", key):
                try:
                    with concurrent.futures.ThreadPoolExecutor(self.transfer.concurrency) as pool:
                        parts = list(pool.map(send, range(len(digest.parts))))
                except botocore.exceptions.ClientError as e:
                    if e.response.get("Error", {}).get("Code") == "BadDigest":
                        raise _changed(path, digest, "a part the server received has other bytes") from None
                    raise
                except Exception:
                    if os.fstat(fd).st_size < digest.size:  # truncated under us, whatever botocore made of it
                        raise _changed(path, digest, "it is shorter now") from None
                    raise
                self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=full, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
        except BaseException:
            with contextlib.suppress(Exception):  # the upload failed already; gc aborts what this leaves
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
            raise

    def _send_checked(self, op: str, args: Callable[[], dict[str, Any]], checksum: str, size: int) -> dict[str, Any]:
        """``put_object`` or ``upload_part`` of ``size`` image bytes whose SHA-256 is ``checksum`` (base64), sent
        in the signed ``x-amz-checksum-sha256`` header.

        That header binds the body: the server must refuse other bytes (``BadDigest``). So SigV4's own payload
        hash, which botocore computes over every byte on plain ``http://`` endpoints (a second SHA-256 pass of
        the image on the client, checked again by the server), adds nothing; the body goes as ``UNSIGNED-PAYLOAD``
        (botocore does the same on ``https://``). Only while the server keeps its side of that bargain: its
        answer must give the same checksum back (AWS documents it; SeaweedFS does). An answer without it, or a
        refusal of an unsigned payload, makes this store sign every payload from then on, and the body is sent
        again, signed. A body shorter than ``transfer.unsigned_min`` is sent signed by :attr:`client`.
        """
        if self.unsigned_payloads is not False and size >= self.transfer.unsigned_min:
            try:
                resp: dict[str, Any] = getattr(self._unsigned_client(), op)(**args(), ChecksumSHA256=checksum)
            except botocore.exceptions.ClientError as e:
                if self.unsigned_payloads or e.response.get("Error", {}).get("Code") == "BadDigest":
                    raise
                self.unsigned_payloads = False  # e.g. a server that wants every payload hashed
            else:
                if resp.get("ChecksumSHA256") == checksum:
                    self.unsigned_payloads = True
                    return resp
                self.unsigned_payloads = False  # no word that it checked the checksum: send these bytes signed
        return dict(getattr(self.client, op)(**args(), ChecksumSHA256=checksum))

    def clients(self) -> tuple[Any, ...]:
        """Every boto3 client this store sends requests through (for tools that watch or delay its requests):
        :attr:`client`, and the twin image bytes go through (built now if this store has one)."""
        return (self.client,) if self._make_twin is None else (self.client, self._unsigned_client())

    def _unsigned_client(self) -> Any:
        """A twin of :attr:`client` that sends request bodies as ``UNSIGNED-PAYLOAD`` (built once, on first use)."""
        with self._twin_lock:
            if self._twin is None:
                assert self._make_twin is not None  # unsigned_payloads is False for a client given to __init__
                self._twin = self._make_twin()
                self._twin.meta.events.register(
                    "after-call.s3.UploadPart", self._count_part, unique_id=f"imagectl-count-parts-{id(self)}"
                )
            return self._twin

    def _head(self, key: str) -> dict[str, Any] | None:
        with self._boundary("check", key):
            try:
                return dict(self.client.head_object(Bucket=self.bucket, Key=self._key(key), ChecksumMode="ENABLED"))
            except botocore.exceptions.ClientError as e:
                if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                    return None
                raise

    # -- images: one copy, at the target file (catalogue/README.md §6) --------------------------------------
    single_copy = True
    cache_metadata = True

    @property
    def identity(self) -> str:
        return f"{self.shown} at {self.endpoint}"  # one bucket name on two servers: two stores

    def pointer(self, key: str) -> str | None:
        head = self._head(key)
        return None if head is None else _pointed(key, head)

    def _put_pointer(self, blob: str, key: str, if_match: str | None = None) -> bool:
        """Write ``blob`` as a pointer to ``key`` (with ``if_match``: only over that ETag; False when it changed)."""
        return self._put(blob, b"", {} if if_match is None else {"IfMatch": if_match}, {POINTER_META: key})

    def release_blob(self, blob: str, key: str, size: int, sha256: str) -> int:
        """Turn ``blob``, a full copy of the image a catalogue written before images were stored once keeps beside
        its target file ``key``, into a pointer to ``key``: after ``key`` is found to hold the image (its stored
        whole-object SHA-256 checksum, else by reading and hashing it), and only over the copy just checked
        (``If-Match`` on its ETag). A blob that is a pointer already, is absent, or has another size is left to
        ``catalogue verify``: 0 bytes freed. Clients older than this layout can no longer read the image."""
        head = self._head(blob)
        if head is None or _pointed(blob, head) is not None or int(head.get("ContentLength", -1)) != size:
            return 0
        target = self._head(key)
        if target is None or not self._holds_image(key, target, size, sha256):
            raise CatalogueStateError(
                f"{key} does not hold the image's {size} bytes of sha256 {sha256[:12]}…: {blob} is kept",
                hint=f"run: imagectl catalogue verify {self.shown}",
            )
        swapped = self._put_pointer(blob, key, if_match=str(head.get("ETag", "")))
        return size if swapped else 0  # changed since the check (a publisher re-pointed it): nothing freed here

    def _holds_image(self, key: str, head: dict[str, Any], size: int, sha256: str) -> bool:
        """Whether ``key`` (described by ``head``) holds ``size`` bytes of ``sha256``: by its stored whole-object
        checksum where it has one, else read through and hashed (a body longer than ``size``, whatever ``head``
        said, is refused at the first chunk past it)."""
        if not _matches(head, FileDigest(sha256=sha256, size=size)):  # the size, and a checksum that differs
            return False
        checksum = str(head.get("ChecksumSHA256") or "")
        if checksum and "-" not in checksum:
            return True  # the server's whole-object checksum is the image's
        return self.hash_object(key, size) == (size, sha256)

    def _source(self, blob: str) -> tuple[str, dict[str, Any]] | None:
        """The stored copy of the blob's bytes, as ``(key, head)``: the blob itself (a catalogue written before
        images were stored once) or the target file its pointer names; None when there is neither."""
        head = self._head(blob)
        if head is None:
            return None
        at = _pointed(blob, head)
        if at is None:
            return blob, head
        target = self._head(at)
        return None if target is None else (at, target)

    def place_target(self, blob: str, key: str, size: int) -> bool:
        """A server-side copy of the image ``blob`` stands for at ``key`` (CopyObject; UploadPartCopy in parts
        above 64 MiB), from the blob itself or from the target file its pointer names: no image byte passes
        through this machine. The copy is made only from the object version just checked
        (``CopySourceIfMatch``), and a ``key`` that already holds an object of the right size and checksum is
        kept."""
        dst = self._head(key)
        found = self._source(blob)
        if found is None:
            if dst is not None and int(dst.get("ContentLength", -1)) == size:
                return False  # the pointer names a copy gc has removed since; this one is judged by size
            raise ObjectMissingError(f"{blob} not found in {self.shown} (nor a copy it points at)")
        src_key, src = found
        if int(src.get("ContentLength", -1)) != size:
            raise CatalogueStateError(
                f"{src_key} has {src.get('ContentLength')} bytes, signed length is {size}",
                hint=f"run: imagectl catalogue verify {self.shown}",
            )
        if src_key == key:
            return False
        if dst is not None and int(dst.get("ContentLength", -1)) == size:
            theirs, ours = dst.get("ChecksumSHA256"), src.get("ChecksumSHA256")
            if not theirs or not ours or theirs == ours or "-" in str(theirs) + str(ours):
                return False  # no comparable checksums: judged by size, as upload_file does; verify hashes it
        self._copy(src_key, src, key, size)
        return True

    def _copy(self, src_key: str, src: dict[str, Any], key: str, size: int) -> None:
        source = {"Bucket": self.bucket, "Key": self._key(src_key)}
        etag = str(src.get("ETag", ""))
        with self._boundary("copy", key):
            if size <= COPY_MAX:
                self.client.copy_object(
                    Bucket=self.bucket,
                    Key=self._key(key),
                    CopySource=source,
                    CopySourceIfMatch=etag,
                    ContentType=_content_type(key),
                    MetadataDirective="REPLACE",
                )
            else:
                self._copy_parts(source, etag, key, size)

    def store_image(self, blob: str, key: str, path: str, digest: FileDigest, *, unlisted: bool = False) -> bool:
        """The image's bytes stored once, at its target file ``key``; ``blob`` becomes a pointer to it.

        Bytes the bucket already holds are not sent again: ``key`` itself, or the blob (a catalogue written
        before images were stored once), or the target file of another version the blob's pointer names, each
        taken only with the digest's size and (where comparable) SHA-256 checksum, then copied server-side.
        Otherwise the file is uploaded to ``key`` (checked by the server as :meth:`upload_file` does) and the
        blob key is (re)written as a pointer to it, unless it holds the bytes themselves. Returns whether image
        bytes were sent. ``unlisted`` (a listing just missed ``key``) spares the request asking for ``key``."""
        dst = None if unlisted else self._head(key)
        found = self._source(blob)
        held = found is not None and _matches(found[1], digest)
        if dst is not None and _matches(dst, digest):
            sent = False
        elif held and found is not None:
            try:
                self._copy(found[0], found[1], key, digest.size)
                sent = False
            except ObjectMissingError:  # the copy was removed (gc) between the check and the copy
                self._upload(key, path, digest)
                sent, held = True, False
        else:
            self._upload(key, path, digest)
            sent = True
        if not held:
            self._put_pointer(blob, key)
        return sent

    def _copy_parts(self, source: dict[str, str], etag: str, key: str, size: int) -> None:
        full = self._key(key)
        part = max(COPY_PART, -(-size // 10_000))
        upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=full, ContentType=_content_type(key))
        upload_id = str(upload["UploadId"])

        def copy(n: int) -> dict[str, Any]:
            start = (n - 1) * part
            resp = self.client.upload_part_copy(
                Bucket=self.bucket,
                Key=full,
                UploadId=upload_id,
                PartNumber=n,
                CopySource=source,
                CopySourceIfMatch=etag,
                CopySourceRange=f"bytes={start}-{min(start + part, size) - 1}",
            )
            return {"PartNumber": n, "ETag": resp["CopyPartResult"]["ETag"]}

        try:
            with concurrent.futures.ThreadPoolExecutor(self.transfer.concurrency) as pool:
                parts = list(pool.map(copy, range(1, -(-size // part) + 1)))
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=full, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            with contextlib.suppress(Exception):  # gc aborts what this leaves, should the abort fail too
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
            raise

    def delete(self, key: str) -> None:
        with self._boundary("delete", key):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """A no-op: S3 has no lock. Publishers on S3 serialise by compare-and-swap (:meth:`write_if_match`,
        :meth:`write_new`), never by holding a lock, so a publisher that dies holds nothing up."""
        yield

    def presign(self, key: str, expires: int = 3600) -> str:
        """A time-limited plain-HTTPS URL of ``key`` (for pulling without AWS credentials)."""
        with self._boundary("presign", key):
            return str(
                self.client.generate_presigned_url(
                    "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=expires
                )
            )


def _make_client(timeout: float, retries: int, concurrency: int) -> tuple[Any, Callable[[], Any]]:
    """An S3 client from the standard AWS settings, path-style addressing unless the endpoint is AWS's own; and
    a function that builds its twin that sends request bodies as ``UNSIGNED-PAYLOAD`` (S3Store._send_checked)."""
    try:
        session = boto3.session.Session()
    except botocore.exceptions.ProfileNotFound as e:
        raise KeyProblemError(f"AWS profile {e.kwargs.get('profile')!r} not found", hint=_CRED_HINT) from e
    region = os.environ.get("AWS_REGION") or session.region_name or _DEFAULT_REGION

    def build(addressing: str | None, sign_payloads: bool | None = None) -> Any:
        s3: dict[str, Any] = {"addressing_style": addressing} if addressing else {}
        if sign_payloads is not None:  # None: botocore decides (it hashes every body on http://)
            s3["payload_signing_enabled"] = sign_payloads
        config = botocore.config.Config(
            region_name=region,
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"mode": "standard", "total_max_attempts": retries + 1},  # max_attempts would count retries
            max_pool_connections=max(10, concurrency + 2),
            user_agent_extra=f"imagectl/{__version__}",
            signature_version="s3v4",  # also for presigned URLs, which botocore would otherwise sign with SigV2
            s3=s3,
        )
        try:
            return session.client("s3", config=config)
        except botocore.exceptions.BotoCoreError as e:
            raise InvalidInputError(f"S3 client settings: {type(e).__name__}: {e}") from e

    client, style = build(None), None
    host = (client.meta.endpoint_url or "").split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    if not (host.endswith(".amazonaws.com") or host.endswith(".amazonaws.com.cn")):
        # Other S3 servers (SeaweedFS, MinIO, Ceph on an IP or a single host name) need the bucket in the path.
        client, style = build("path"), "path"
    return client, lambda: build(style, sign_payloads=False)


def _no_expect_on_empty(request: Any, **kwargs: Any) -> None:
    """Send an empty PUT without ``Expect: 100-continue``.

    With that header and no body, SeaweedFS (4.48) leaves the kept-alive connection in a state where the next
    request on it gets no answer until the read timeout; there is nothing to hold back anyway.
    """
    if str(request.headers.get("Content-Length", "")) == "0" and "Expect" in request.headers:
        del request.headers["Expect"]


def _install_header_hook(client: Any) -> None:
    """Let PutObject carry If-Match/If-None-Match on a botocore too old to know those parameters.

    The private parameter is taken out before botocore validates the call and turned into headers before it signs.
    """

    def take(params: dict[str, Any], context: dict[str, Any], **kwargs: Any) -> None:
        headers = params.pop(_CONDITION_HEADERS, None)
        if headers:
            context["imagectl_headers"] = headers

    def add(params: dict[str, Any], context: dict[str, Any], **kwargs: Any) -> None:
        params.setdefault("headers", {}).update(context.get("imagectl_headers", {}))

    client.meta.events.register("before-parameter-build.s3.PutObject", take, unique_id="imagectl-conditions-take")
    client.meta.events.register("before-call.s3.PutObject", add, unique_id="imagectl-conditions-add")
