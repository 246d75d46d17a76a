"""Data at URLs: COGs/GeoTIFFs through GDAL's virtual file systems, TIFFs, manifests and Zarr through fsspec.

A *location* is a local :class:`~pathlib.Path` or a URL string (``http://``, ``https://``, ``s3://``,
``gs://``). URLs stay strings throughout the readers: ``Path("https://host/a.tif")`` would fold the ``//``
and lose the host. Local paths take exactly the code paths they always took; only URLs go through here.

* Rasters (:class:`~domainmae.data.raster.RasterScene`) open ``/vsicurl/``, ``/vsis3/`` or ``/vsigs/`` paths
  inside :func:`gdal_env`, GDAL's settings for cloud-optimised reads (what the GDAL and rio-cogeo docs advise):
  no directory listing or sidecar probing on open (``benchmarks/remote.py``: 10 requests to open a COG
  without them, 2 with), consecutive tile ranges merged into one request, HTTP/2 multiplexing and a cache
  of fetched ranges. The settings apply to remote opens and reads only, never to local files.
* Microscopy TIFFs, manifests and Zarr stores at URLs are read through fsspec (``pip install
  'domainmae[remote]'``: fsspec and aiohttp; ``s3fs`` or ``gcsfs`` for ``s3://`` and ``gs://``), imported
  only when a URL is read. Over HTTP(S) they retry transient statuses as GDAL does, and an error status
  raises ``OSError`` naming the URL (see :func:`storage_options`), so a reader's ``on_error="skip"`` and the
  DataLoader's skipping see it as the unreadable file it is.
"""
from __future__ import annotations

import asyncio
import io
import posixpath
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from ..deps import missing, require

if TYPE_CHECKING:
    from aiohttp import ClientRequest, ClientResponse
    from aiohttp.client_middlewares import ClientHandlerType

#: A local file or folder, or a URL string.
Location = Path | str

#: URL schemes the readers accept, with the GDAL virtual file system that reads each.
GDAL_PREFIXES = {"http": "/vsicurl/", "https": "/vsicurl/", "s3": "/vsis3/", "gs": "/vsigs/"}

#: Schemes whose paths are percent-encoded URL paths. ``s3://`` and ``gs://`` locations name bucket keys as they
#: are: s3fs, gcsfs and GDAL's ``/vsis3/``, ``/vsigs/`` encode them into their requests themselves.
HTTP_SCHEMES = ("http", "https")

#: The fsspec filesystem package each scheme needs (what to tell a user who lacks it).
FSSPEC_PACKAGES = {"http": "aiohttp", "https": "aiohttp", "s3": "s3fs", "gs": "gcsfs"}

#: Object stores answer 429 and 5xx under load: GDAL and the fsspec readers retry a request that many times,
#: waiting this many seconds before the first retry and twice as long before each next one.
HTTP_MAX_RETRY = 3
HTTP_RETRY_DELAY = 0.5

#: The statuses retried (as GDAL does): too many requests, and a server or gateway that failed or is overloaded.
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})

#: Error statuses fsspec's HTTP filesystem reads itself: a missing file (``FileNotFoundError``) and a range
#: past the end of a file (no bytes).
FSSPEC_STATUSES = frozenset({404, 416})

#: GDAL settings for remote rasters (GDAL's "configuration options", set for remote files only).
GDAL_REMOTE_OPTIONS: dict[str, Any] = {
    # Without it GDAL lists the parent "directory" and probes for .aux.xml/.ovr/.msk sidecars on every open.
    # gdal_env adds CPL_VSIL_CURL_ALLOWED_EXTENSIONS, the file's own extension, which stops requests for
    # any other file; a fixed list (.tif,.tiff) would make GDAL refuse URLs without one (API endpoints).
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    # A window spanning adjacent tiles is fetched in one request rather than one per tile.
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    # Many tile requests over one HTTP/2 connection where the server speaks it (HTTPS; GDAL's default, stated
    # because the two settings above are what make it pay).
    "GDAL_HTTP_MULTIPLEX": "YES",
    # Fetched bytes are kept, since a training run reads overlapping windows of the same scenes many times:
    # per open file (4 MB, so the 128 files a process keeps open hold at most 512 MB) and across files in
    # curl's process-wide cache. Decoded blocks go to GDAL's block cache, left at GDAL's default (5 % of RAM):
    # GDAL reads GDAL_CACHEMAX once per process, so setting it here would depend on which file came first.
    "VSI_CACHE": "TRUE",
    "VSI_CACHE_SIZE": 4 * 2**20,
    "CPL_VSIL_CURL_CACHE_SIZE": 256 * 2**20,
    "GDAL_HTTP_MAX_RETRY": HTTP_MAX_RETRY,
    "GDAL_HTTP_RETRY_DELAY": HTTP_RETRY_DELAY,
}


def is_url(location: object) -> bool:
    """True for a URL string of a scheme the readers know (``http``, ``https``, ``s3``, ``gs``)."""
    return isinstance(location, str) and urlsplit(location).scheme in GDAL_PREFIXES


def as_location(value: str | Path) -> Location:
    """``value`` as a location: URLs stay strings, anything else becomes a :class:`Path`."""
    return value if is_url(value) else Path(value)


def pure_path(location: Location) -> PurePosixPath | Path:
    """The path part of ``location``, for its ``name``, ``stem``, ``suffix`` and ``parent.name``.

    An HTTP(S) URL's path is decoded (``scene%201.tif`` -> ``scene 1.tif``), so a file has the same name (and
    scene id) read from disk or from a URL; an ``s3://`` or ``gs://`` key is its name as it is.
    """
    if not is_url(location):
        return Path(location)
    scheme, _, path, _, _ = urlsplit(location)
    return PurePosixPath(unquote(path) if scheme in HTTP_SCHEMES else path)


def parent(location: Location) -> Location:
    """The folder holding ``location``."""
    return join(location, "..") if is_url(location) else Path(location).parent


def join(base: Location, *parts: str | Path) -> Location:
    """``base`` joined with ``parts``, like ``Path /``: a URL or absolute part replaces what came before.

    A part that is not a URL is a file or folder name, as a manifest's ``FileName``/``PathName`` cells and a
    list's relative lines are on disk: joined onto an HTTP(S) URL it is percent-encoded, so ``%``, ``#``, ``?``
    and spaces are characters of the name (``pct%41.tif`` is that file, not ``pctA.tif``; ``a.tif?x`` is a file
    of that name) and the same manifest or list names the same files on disk and at a URL (onto an ``s3://``
    or ``gs://`` location it is part of a key, kept as it is: see :data:`HTTP_SCHEMES`). A part that is a
    URL is used as it is: it keeps its own query and fragment and inherits none. Relative parts inherit the
    base's query, so the entries of a list at ``https://h/scenes.txt?token=abc`` carry the list's token;
    an entry that needs a query of its own (a signed URL) is written as a whole URL.

    URL paths are normalised (``.`` and ``..`` resolved), so a manifest's ``PathName`` of ``.`` or
    ``../images`` works at a URL as it does on disk.
    """
    location = as_location(base)
    for part in map(str, parts):
        if is_url(part) or not is_url(location):
            location = as_location(part) if is_url(part) else Path(location) / part
            continue
        scheme, netloc, path, query, fragment = urlsplit(location)
        part = quote(part, safe="/") if scheme in HTTP_SCHEMES else part
        path = posixpath.normpath(posixpath.join(path or "/", part))
        location = urlunsplit((scheme, netloc, path, query, fragment))
    return location


def gdal_path(location: Location) -> Location:
    """What GDAL opens for ``location``: ``/vsicurl/<url>``, ``/vsis3/<bucket>/<key>``, ``/vsigs/...``."""
    if not is_url(location):
        return location
    scheme = urlsplit(location).scheme
    # /vsicurl/ takes the whole URL; /vsis3/ and /vsigs/ take bucket/key and sign requests themselves.
    return GDAL_PREFIXES[scheme] + (location if scheme in HTTP_SCHEMES else location.split("://", 1)[1])


def gdal_env(location: Location) -> AbstractContextManager[Any]:
    """GDAL's remote settings (:data:`GDAL_REMOTE_OPTIONS`) around a remote open or read; nothing for files."""
    if not is_url(location):
        return nullcontext()
    import rasterio  # here, so that modules reading only microscopy data do not load GDAL

    suffix = pure_path(location).suffix
    allowed = {"CPL_VSIL_CURL_ALLOWED_EXTENSIONS": suffix} if suffix else {}
    return rasterio.Env(**GDAL_REMOTE_OPTIONS, **allowed)


def require_fsspec(url: str) -> None:
    """Import fsspec and its filesystem for ``url``'s scheme, or raise :class:`~domainmae.deps.MissingDependencyError`
    naming the URL and what to install."""
    scheme = urlsplit(url).scheme
    package = FSSPEC_PACKAGES[scheme]
    extra = "pip install 'domainmae[remote]'"  # fsspec and aiohttp; s3fs and gcsfs are the object stores' own
    install = extra if package == "aiohttp" else f"{extra} {package}"
    fsspec = require("fsspec", f"reading {url}", install)
    try:
        fsspec.get_filesystem_class(scheme)  # imports aiohttp, s3fs or gcsfs
    except ImportError as err:
        raise missing(f"reading {url}", package, install, err) from err


class RemoteError(OSError):
    """A request that failed for good: an error status, or no connection after the retries; names the URL."""


@contextmanager
def failures_named() -> Iterator[None]:
    """Raise what :func:`_retrying` found when fsspec reports it as ``FileNotFoundError(url)``, which it does
    for any failure to reach a file: an unreachable host would read as a missing file, with no reason given."""
    try:
        yield
    except FileNotFoundError as err:
        cause: BaseException | None = err
        while cause is not None and not isinstance(cause, RemoteError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        raise RemoteError(str(cause)) from err


async def _retrying(request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
    """An aiohttp client middleware: a request answered with a transient status, or whose connection failed
    (reset, or closed without an answer), is sent again, at most :data:`HTTP_MAX_RETRY` times, after waits
    doubling from :data:`HTTP_RETRY_DELAY`; an error status that remains raises ``OSError`` naming the URL,
    unless fsspec reads it itself (:data:`FSSPEC_STATUSES`), and so does a connection that keeps failing.

    aiohttp's own errors for a status (``ClientResponseError``) and for a hang-up (``ServerDisconnectedError``)
    are no ``OSError``, so readers and the DataLoader, which skip unreadable files by catching ``OSError``,
    would let them end a run.
    """
    from aiohttp import ClientConnectionError

    for attempt in range(HTTP_MAX_RETRY + 1):
        try:
            response = await handler(request)
        except ClientConnectionError as err:  # a reset or a hang-up without an answer: transient too
            if attempt == HTTP_MAX_RETRY:
                raise RemoteError(f"{request.url}: {err or type(err).__name__} ({attempt + 1} tries)") from err
            await asyncio.sleep(HTTP_RETRY_DELAY * 2**attempt)
            continue
        if response.status not in TRANSIENT_STATUSES or attempt == HTTP_MAX_RETRY:
            break
        response.release()  # the connection goes back to the pool for the next try
        await asyncio.sleep(HTTP_RETRY_DELAY * 2**attempt)
    if response.status >= 400 and response.status not in FSSPEC_STATUSES:
        response.release()
        tries = f" ({attempt + 1} tries)" if response.status in TRANSIENT_STATUSES else ""
        raise RemoteError(f"{request.url}: HTTP {response.status} {response.reason}{tries}")
    return response


def storage_options(url: str) -> dict[str, Any]:
    """fsspec's options for reading ``url``: over HTTP(S), an aiohttp client that retries transient statuses
    and raises ``OSError`` for error statuses (:func:`_retrying`). ``s3fs`` and ``gcsfs`` retry themselves."""
    return {"client_kwargs": {"middlewares": (_retrying,)}} if urlsplit(url).scheme in HTTP_SCHEMES else {}


def open_file(url: str) -> Any:
    """An :class:`fsspec.core.OpenFile` for ``url``, for binary reads (tifffile and ``with`` open it)."""
    require_fsspec(url)
    import fsspec

    return fsspec.open(url, "rb", **storage_options(url))


def read_bytes(url: str) -> bytes:
    """The whole file at ``url``; a missing file raises ``FileNotFoundError`` naming the URL."""
    with failures_named(), open_file(url) as handle:
        return handle.read()


def whole_file(location: Location) -> Location | io.BytesIO:
    """What PIL, numpy and pyarrow open for a file they read whole: a local path itself, or the bytes at a URL."""
    return io.BytesIO(read_bytes(location)) if is_url(location) else location


def read_list(path: str | Path) -> list[Location]:
    """The locations a ``.txt`` list names, one a line (blank lines and lines starting with ``#`` skipped).

    Relative entries are file names resolved against the list's own folder (or URL), as a manifest's paths
    are (see :func:`join`: at a URL they are percent-encoded and take the list's query); whole URLs are kept
    as they are.
    """
    # utf-8-sig, as for manifests: a byte-order mark (Notepad, Excel's "UTF-8") is dropped, not read into line 1.
    text = (read_bytes(path) if is_url(path) else Path(path).read_bytes()).decode("utf-8-sig")
    lines = [line.strip() for line in text.splitlines()]
    locations = [join(parent(as_location(path)), line) for line in lines if line and not line.startswith("#")]
    if not locations:
        raise ValueError(f"the list {path} names no file")
    return locations
