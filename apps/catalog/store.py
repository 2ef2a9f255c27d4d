"""The image store: master files and converted copies, keyed by ids (never by a user's file name).

Two backends, chosen by settings.SKYPORT_IMAGE_STORE:
- "file": a directory (SKYPORT_IMAGE_DIR). Paths are readable by every worker of this server (or of a shared
  filesystem), so a push hands the stored file's path straight to the driver.
- "s3": an S3-compatible bucket (SKYPORT_IMAGE_S3_*), for workers on several machines. `local_path` downloads the
  object to local scratch space first; a push downloads the file it needs on the worker that runs it and removes it
  when the copy is finished (a step resumed by another worker downloads it again there).

Writes go to a temporary name first and are renamed (or uploaded) whole, so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from django.conf import settings

CHUNK = 1024 * 1024
KEY_RE = re.compile(r"^[a-z0-9][a-z0-9._/-]{0,200}$")


class StoreError(Exception):
    """The store failed (disk full, bucket unreachable). The message never carries credentials."""


class TooLarge(StoreError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"The file is larger than the limit of {limit} bytes.")
        self.limit = limit


def check_key(key: str) -> str:
    if not KEY_RE.match(key) or ".." in key or "//" in key:
        raise ValueError(f"invalid image store key {key!r}")
    return key


def scratch_dir() -> Path:
    """Local space for files being checked or converted (same filesystem as the file store: renames are cheap)."""
    path = Path(settings.SKYPORT_IMAGE_DIR) / "tmp"
    path.mkdir(parents=True, exist_ok=True)
    return path


def scratch_file(suffix: str = "") -> str:
    return str(scratch_dir() / f"{uuid.uuid4().hex}{suffix}")


def copy_stream(
    fileobj: IO[bytes] | Any,
    path: str,
    *,
    max_bytes: int,
    progress: Callable[[int], None] | None = None,
) -> tuple[int, str]:
    """Copy a stream to a local file in chunks: (size, sha256). TooLarge (and the file removed) beyond max_bytes."""
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "wb") as out:
            while True:
                chunk = fileobj.read(CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    raise TooLarge(max_bytes)
                digest.update(chunk)
                out.write(chunk)
                if progress is not None:
                    progress(size)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
    return size, digest.hexdigest()


class FileStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / "store" / check_key(key)

    @contextlib.contextmanager
    def _errors(self, key: str, tmp: str) -> Iterator[None]:
        """A full disk or a permission problem: a StoreError without the server's paths, nothing half-written."""
        try:
            yield
        except OSError as exc:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            reason = exc.strerror or type(exc).__name__
            raise StoreError(f"The image store could not keep {os.path.basename(key)} ({reason}).") from None

    def put_stream(self, key: str, fileobj: IO[bytes] | Any, max_bytes: int) -> tuple[int, str]:
        target = self.path(key)
        tmp = scratch_file(".part")
        with self._errors(key, tmp):
            target.parent.mkdir(parents=True, exist_ok=True)
            size, sha = copy_stream(fileobj, tmp, max_bytes=max_bytes)
            os.replace(tmp, target)
        return size, sha

    def put_file(self, key: str, path: str, *, move: bool = False) -> None:
        target = self.path(key)
        tmp = scratch_file(".part")
        with self._errors(key, tmp):
            target.parent.mkdir(parents=True, exist_ok=True)
            if move:
                try:
                    os.replace(path, target)
                    return
                except OSError:  # another filesystem: copy below
                    pass
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
            if move:
                os.unlink(path)

    @contextlib.contextmanager
    def local_path(self, key: str) -> Iterator[str]:
        path = self.path(key)
        if not path.is_file():
            raise StoreError(f"The image store has no file {key}.")
        yield str(path)

    def fetch(self, key: str, holder: str = "") -> str:
        """A local path of the object that stays until `release(key, holder)` (here: the stored file itself)."""
        path = self.path(key)
        if not path.is_file():
            raise StoreError(f"The image store has no file {key}.")
        return str(path)

    def release(self, key: str, holder: str = "") -> None:
        """Nothing to clean up: the path was the stored file."""

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(key).unlink()
        with contextlib.suppress(OSError):  # the image's folder, once empty
            self.path(key).parent.rmdir()

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def size(self, key: str) -> int:
        return self.path(key).stat().st_size


class S3Store:
    def __init__(
        self, *, bucket: str, endpoint: str = "", region: str = "us-east-1", access_key: str = "", secret_key: str = ""
    ) -> None:
        if not bucket:
            raise StoreError("SKYPORT_IMAGE_S3_BUCKET is not set: the S3 image store needs a bucket.")
        self.bucket = bucket
        self._options = {
            "endpoint_url": endpoint or None,
            "region_name": region or "us-east-1",
            "aws_access_key_id": access_key or None,
            "aws_secret_access_key": secret_key or None,
        }
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3

            # a session of its own: boto3's default session is not safe to build clients from in parallel threads
            self._client = boto3.session.Session().client("s3", **self._options)
        return self._client

    def _errors(self, action: str) -> Any:
        store = self

        @contextlib.contextmanager
        def wrap() -> Iterator[None]:
            from boto3.exceptions import Boto3Error
            from botocore.exceptions import BotoCoreError, ClientError

            try:
                yield
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "error")
                raise StoreError(f"The S3 image store could not {action} ({code}, bucket {store.bucket}).") from None
            except Boto3Error as exc:
                # upload_file wraps the S3 error in S3UploadFailedError, whose text names local paths
                cause = exc.__cause__ or exc.__context__
                code = cause.response.get("Error", {}).get("Code", "error") if isinstance(cause, ClientError) else (
                    type(exc).__name__)
                raise StoreError(f"The S3 image store could not {action} ({code}, bucket {store.bucket}).") from None
            except BotoCoreError as exc:
                raise StoreError(f"The S3 image store could not {action} ({type(exc).__name__}).") from None

        return wrap()

    def put_stream(self, key: str, fileobj: IO[bytes] | Any, max_bytes: int) -> tuple[int, str]:
        # through a local file: the size limit and the digest are known before anything is in the bucket
        tmp = scratch_file(".part")
        try:
            size, sha = copy_stream(fileobj, tmp, max_bytes=max_bytes)
            self.put_file(key, tmp)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return size, sha

    def put_file(self, key: str, path: str, *, move: bool = False) -> None:
        with self._errors(f"store {check_key(key)}"):
            self.client.upload_file(path, self.bucket, key)
        if move:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    @contextlib.contextmanager
    def local_path(self, key: str) -> Iterator[str]:
        fd, tmp = tempfile.mkstemp(dir=scratch_dir(), suffix=".dl")
        os.close(fd)
        try:
            with self._errors(f"read {check_key(key)}"):
                self.client.download_file(self.bucket, key, tmp)
            yield tmp
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _cache_path(self, key: str, holder: str = "") -> Path:
        # one download per holder (a push): releasing one never removes the file another push still reads
        root = Path(settings.SKYPORT_IMAGE_DIR) / "s3-cache"
        return root / check_key(holder) / check_key(key) if holder else root / check_key(key)

    def fetch(self, key: str, holder: str = "") -> str:
        target = self._cache_path(key, holder)
        if target.is_file():
            return str(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = scratch_file(".dl")
        try:
            with self._errors(f"read {key}"):
                self.client.download_file(self.bucket, key, tmp)
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return str(target)

    def release(self, key: str, holder: str = "") -> None:
        path = self._cache_path(key, holder)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        if holder:  # the holder's folders, once empty
            root = Path(settings.SKYPORT_IMAGE_DIR) / "s3-cache"
            for parent in path.parents:
                if parent == root or root not in parent.parents:
                    break
                try:
                    parent.rmdir()
                except OSError:
                    break

    def delete(self, key: str) -> None:
        with self._errors(f"delete {check_key(key)}"):
            self.client.delete_object(Bucket=self.bucket, Key=key)
        self.release(key)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        with self._errors(f"check {check_key(key)}"):
            try:
                self.client.head_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise
        return True

    def size(self, key: str) -> int:
        with self._errors(f"check {check_key(key)}"):
            return int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])


ImageStore = FileStore | S3Store


def get_store() -> ImageStore:
    kind = settings.SKYPORT_IMAGE_STORE
    if kind == "file":
        return FileStore(settings.SKYPORT_IMAGE_DIR)
    if kind == "s3":
        return S3Store(
            bucket=settings.SKYPORT_IMAGE_S3_BUCKET,
            endpoint=settings.SKYPORT_IMAGE_S3_ENDPOINT,
            region=settings.SKYPORT_IMAGE_S3_REGION,
            access_key=settings.SKYPORT_IMAGE_S3_ACCESS_KEY,
            secret_key=settings.SKYPORT_IMAGE_S3_SECRET_KEY,
        )
    raise StoreError(f"Unknown SKYPORT_IMAGE_STORE {kind!r}: use 'file' or 's3'.")


def master_key(folder: str, fmt: str) -> str:
    return check_key(f"images/{folder}/master.{fmt}")


def converted_key(master: str, fmt: str) -> str:
    return check_key(f"{master.rsplit('/', 1)[0]}/disk.{fmt}")
