#!/usr/bin/env bash
# CPU memory/speed of one Wan 2.1 T2V 1.3B transformer forward (33 frames, 256x256, 512 text
# tokens) through `videosdgx model forward`, with peak RSS from GNU time. Numbers go to
# docs/PERFORMANCE.md. Usage: tests/perf/wan21_1p3b_cpu_forward.sh [WORK_DIR] [BINARY]
set -euo pipefail
work=${1:-/tmp/wan13b}
bin=${2:-target/release/videosdgx}
python=${PYTHON:-/work/venv/bin/python}
if [ ! -f "$work/inputs.safetensors" ]; then
  "$python" "$(dirname "$0")/make_wan21_1p3b_random.py" "$work"
fi
/usr/bin/time -v "$bin" model forward --model "$work/transformer" --inputs "$work/inputs.safetensors" \
  --out "$work/out.safetensors" --dtype f32 --json 2> "$work/time.txt"
grep -E "Elapsed|Maximum resident" "$work/time.txt"
