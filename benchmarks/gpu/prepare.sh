#!/usr/bin/env bash
# Run HERE (the build machine, which reaches PyPI) before a GPU session: fills .gpu-carry/ (git-ignored) with what
# benchmarks/gpu/run.sh needs on the device machine, which reaches nothing and runs Python 3.12 with its own torch:
#   - cp312 wheels, pinned as in constraints.txt, of the packages its image lacks (about 36 MB);
#   - the sneakers query photos and a share of the reference photos, with their manifest (about 20 MB).
# Then, through the device tool:  run(command="bash benchmarks/gpu/run.sh", carry=[".gpu-carry"], timeout_s=560)
# (the working tree and .gpu-carry travel together: 64 MiB at most).
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${COUNTERFEIT_SCAN_BENCH_DATA:-../shared/data}
REFERENCES=${GPU_CARRY_REFERENCES:-100}
PYTHON=${PYTHON:-.venv/bin/python}
CARRY=.gpu-carry
# What the device image lacks (its package list: the device tool's KINDS.md); their own dependencies are there.
PACKAGES="faiss-cpu open_clip_torch ftfy fastapi starlette pydantic pydantic_core annotated-types typing-inspection
uvicorn python-multipart httptools pydantic-settings python-dotenv SQLAlchemy greenlet simplejpeg ImageHash PyWavelets wcwidth
opentelemetry-api"

rm -rf "$CARRY" && mkdir -p "$CARRY/wheels" "$CARRY/data/sneakers"
pins=()
for name in $PACKAGES; do
  pins+=("$(grep -i -E "^${name}==" constraints.txt || echo "$name")")
done
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_28_x86_64 -d "$CARRY/wheels" "${pins[@]}"

"$PYTHON" - "$DATA/sneakers" "$CARRY/data/sneakers" "$REFERENCES" <<'PY'
import csv, shutil, sys
from pathlib import Path
source, target, references = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
with open(source / "manifest.csv", newline="") as fh:
    reader = csv.DictReader(fh)
    fields, rows = reader.fieldnames, list(reader)
refs = [r for r in rows if r["split"] == "reference"]
kept = [r for r in rows if r["split"] == "query"] + refs[:: max(1, len(refs) // references)][:references]
for row in kept:
    (target / row["path"]).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / row["path"], target / row["path"])
with open(target / "manifest.csv", "w", newline="") as fh:
    writer = csv.DictWriter(fh, fieldnames=fields)
    writer.writeheader()
    writer.writerows(kept)
print(f"{len(kept)} photos ({len(kept) - min(references, len(refs))} query)")
PY
du -sh "$CARRY/wheels" "$CARRY/data"
git ls-files -z | xargs -0 du -cb | tail -1 | awk '{printf "tracked files: %.1f MB\n", $1 / 1e6}'
