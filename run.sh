#!/usr/bin/env bash
# gdzoo's one entry point for a fresh machine. It sets up .venv (idempotent), then
#   bash run.sh            runs the main job on its built-in default
#   bash run.sh test [..]  lints (ruff, rules in pyproject.toml), then runs the test suite (extra arguments go to pytest)
# Override the torch install with GDZOO_TORCH_SPEC (e.g. "torch==2.9.1 torchvision==0.24.1" on aarch64).
set -euo pipefail
cd "$(dirname "$0")"

venv=${GDZOO_VENV:-.venv}
torch_spec=${GDZOO_TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
fmnist_dir=${GDZOO_FMNIST_DIR:-/usr/share/datasets/fashion-mnist}

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
stamp="$venv/.gdzoo-installed"
want="$(sha256sum pyproject.toml | cut -c1-16) $torch_spec"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    # torch first and pinned, so no resolver ever swaps it for another build.
    # shellcheck disable=SC2086
    "$py" -m pip install -q --disable-pip-version-check $torch_spec
    # shellcheck disable=SC2086
    "$py" -m pip install -q --disable-pip-version-check -e '.[test]' $torch_spec
    echo "$want" > "$stamp"
fi

if [ ! -f "$fmnist_dir/t10k-images-idx3-ubyte.gz" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null
    else
        echo "Fashion-MNIST is missing from $fmnist_dir: run 'sudo apt-get install dataset-fashion-mnist'" \
             "or set GDZOO_FMNIST_DIR to a folder with the four idx .gz files." >&2
    fi
fi

case "${1:-main}" in
    test)
        shift
        if ! "$py" -m ruff check --quiet .; then
            echo "lint failed: ruff's findings above (rules: pyproject.toml [tool.ruff]); tests not run." \
                 "'ruff check --fix .' fixes import order; wrap long lines by hand." >&2
            exit 1
        fi
        exec "$py" -m pytest "$@" ;;
    main) exec "$venv/bin/gdzoo" train --overwrite ;;  # a rerun moves the last one to runs/<name>.old-<time>/
    *) echo "usage: bash run.sh [test [pytest args...]]" >&2; exit 2 ;;
esac
