#!/usr/bin/env bash
# Debian/Ubuntu packages for `speechwire data synth` (the demo corpus): espeak-ng + sox (speech
# synthesis), trans-de-en (English/German sentence pairs), asterisk-core-sounds-en(-wav) (real
# English prompts); flite, festival and its voices (other speakers: train and held-out voices),
# asterisk-core-sounds-en-gsm (the prompts' telephone encoding); wamerican (/usr/share/dict/words:
# the demo's lexicon, align.lexicon); chromium (the browser page's tests, driven by Playwright). Installs what is missing when run as root; otherwise prints the command.
# Idempotent and silent when everything is present. Not root / not Debian: prints what to
# install and exits 0 (the tests that need these packages skip). Usage: scripts/install_system_deps.sh
set -euo pipefail

PACKAGES=(espeak-ng sox trans-de-en asterisk-core-sounds-en-wav asterisk-core-sounds-en
          flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts asterisk-core-sounds-en-gsm
          wamerican chromium)

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "speechwire: missing ${missing[*]}; this is not a Debian/Ubuntu system - install the" \
         "equivalents of: ${missing[*]}" >&2
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "speechwire: missing ${missing[*]}; run: sudo apt-get install -y ${missing[*]}" >&2
    exit 0
fi
echo "speechwire: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -q "${missing[@]}" >/dev/null; then
    apt-get update -q >/dev/null
    apt-get install -y -q "${missing[@]}" >/dev/null
fi
