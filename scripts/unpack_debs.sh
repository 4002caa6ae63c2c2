#!/usr/bin/env bash
# Unpack Debian packages into a folder of the project, without root and without installing anything
# system-wide: `apt-get download` + `dpkg-deb -x` (about a second). Then run PROBE (a command line, run
# with the unpacked libraries first on LD_LIBRARY_PATH) to prove the binaries start.
#
#   scripts/unpack_debs.sh DIR "PROBE" PACKAGE...
#
# Exit 0 with DIR/root filled and DIR/.installed touched; exit 1 with DIR removed and why in DIR.log.
set -uo pipefail
dir="$(realpath -m "$1")" probe="$2"
shift 2
rm -rf "$dir" "$dir.log" && mkdir -p "$dir/debs"
libs() { echo "$dir"/root/usr/lib/*-linux-gnu; }
if (cd "$dir/debs" && apt-get download -o Acquire::Retries=1 -o Acquire::http::Timeout=20 "$@") >"$dir.log" 2>&1 &&
  for deb in "$dir"/debs/*.deb; do dpkg-deb -x "$deb" "$dir/root" || exit 1; done &&
  (cd "$dir/root" && LD_LIBRARY_PATH="$(libs)" $probe) >>"$dir.log" 2>&1; then
  rm -rf "$dir/debs" && touch "$dir/.installed"
  exit 0
fi
rm -rf "$dir"
exit 1
