"""``python -m devhost.upload FILE [NAME]``: drop a local file into the ingest container.

Errors are one line and a non-zero exit: a file that cannot be read, a name outside the name rule
(``shared.names``), storage that does not answer or refuses.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from azure.core.exceptions import AzureError
from azure.storage.blob import BlobServiceClient, ContentSettings

from shared.bootstrap import load_settings
from shared.errors import BlobsealError
from shared.names import check_name, for_terminal


def upload(file: Path, name: str, content_type: str) -> str:
    settings = load_settings()
    check_name(name, "upload")
    service = BlobServiceClient.from_connection_string(settings.data_storage_connection,
                                                       retry_total=2, connection_timeout=5)
    with file.open("rb") as source:
        service.get_blob_client(settings.ingest_container, name).upload_blob(
            source, overwrite=True, content_settings=ContentSettings(content_type=content_type))
    return f"{settings.ingest_container}/{name}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devhost.upload", description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("name", nargs="?", help="blob name (default: the file's name)")
    parser.add_argument("--content-type", default="application/octet-stream")
    args = parser.parse_args(argv)
    try:
        where = upload(args.file, args.name or args.file.name, args.content_type)
    except OSError as exc:
        return _fail(f"cannot read {args.file}: {exc.strerror or type(exc).__name__}")
    except BlobsealError as exc:
        return _fail(exc.message)
    except AzureError as exc:
        reason = getattr(exc, "reason", None) or type(exc).__name__
        return _fail(f"storage refused the upload ({reason}); is `make dev` (Azurite) running?")
    print(f"uploaded {for_terminal(str(args.file))} as {for_terminal(where)}")
    return 0


def _fail(message: str) -> int:
    print(f"upload: error: {for_terminal(message)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
