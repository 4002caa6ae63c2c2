"""``python -m devhost.upload FILE [NAME]``: drop a local file into the ingest container."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from azure.storage.blob import BlobServiceClient, ContentSettings

from shared.bootstrap import load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devhost.upload", description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("name", nargs="?", help="blob name (default: the file's name)")
    parser.add_argument("--content-type", default="application/octet-stream")
    args = parser.parse_args(argv)
    settings = load_settings()
    name = args.name or args.file.name
    service = BlobServiceClient.from_connection_string(settings.data_storage_connection)
    with args.file.open("rb") as source:
        service.get_blob_client(settings.ingest_container, name).upload_blob(
            source, overwrite=True, content_settings=ContentSettings(content_type=args.content_type))
    print(f"uploaded {args.file} as {settings.ingest_container}/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
