#!/usr/bin/env bash
# One command for the GPU path (issue 16): the `cuda` tests, then the timings (benchmarks/gpu_bench.py).
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: bash benchmarks/gpu_check.sh [--cpu] [--skip-tests] [--out FILE] [--device cuda:N]

Runs the CUDA tests (pytest -m cuda tests/test_cuda.py), then times GDConv2d against nn.Conv2d
and the models' AMP training throughput, prints a Markdown table and replaces the GPU section of
docs/benchmarks.md (between <!-- gpu-check:begin --> and <!-- gpu-check:end -->). About 5 minutes
on one GPU.

  --cpu          the same steps on CPU with tiny sizes (CI plumbing check, ~2 minutes on 2 cores):
                 the test bodies run with GDZOO_CHECK_DEVICE=cpu, the fused Triton generator in Triton's
                 interpreter (TRITON_INTERPRET=1) for the tests and the launch counts; docs/benchmarks.md is
                 NOT touched
  --skip-tests   timings only
  --out FILE     also write the timing report to FILE
  --device DEV   CUDA device (default cuda); ignored with --cpu
  -h, --help     this text

Environment: PYTHON (default: python3) is the interpreter that has gdzoo, torch and pytest.
EOF
}

cpu=0 tests=1 out="" device="cuda"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --cpu) cpu=1 ;;
        --skip-tests) tests=0 ;;
        --out) [[ $# -ge 2 ]] || { echo "gpu_check: --out needs a file" >&2; exit 2; }; out="$2"; shift ;;
        --device) [[ $# -ge 2 ]] || { echo "gpu_check: --device needs a value" >&2; exit 2; }; device="$2"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."
py="${PYTHON:-python3}"
command -v "$py" >/dev/null || { echo "gpu_check: no Python interpreter '$py' (set PYTHON)" >&2; exit 2; }

if [[ $cpu -eq 1 ]]; then
    # TRITON_INTERPRET=1: the fused Triton generator runs in Triton's CPU interpreter, so the tests and the launch
    # counts cover the path CUDA takes (timings stay on the torch generator, 'auto' on CPU).
    export GDZOO_CHECK_DEVICE=cpu OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" TRITON_INTERPRET=1
    bench_args=(--device cpu --small)
else
    if ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
        echo "gpu_check: no CUDA device visible to $py; run 'bash benchmarks/gpu_check.sh --cpu' for the CPU check" >&2
        exit 1
    fi
    export GDZOO_CHECK_DEVICE="$device"
    bench_args=(--device "$device" --docs docs/benchmarks.md)
fi
[[ -n "$out" ]] && bench_args+=(--out "$out")

start=$SECONDS
if [[ $tests -eq 1 ]]; then
    echo "== cuda tests on $GDZOO_CHECK_DEVICE" >&2
    "$py" -m pytest -m cuda tests/test_cuda.py -q -p no:cacheprovider >&2
fi
echo "== timings on $GDZOO_CHECK_DEVICE ($((SECONDS - start)) s so far)" >&2
"$py" benchmarks/gpu_bench.py "${bench_args[@]}"
echo "== gpu_check done in $((SECONDS - start)) s" >&2
