#!/usr/bin/env bash
# Installs the system packages cwcompose needs (libfluidsynth, a soundfont; Chromium for
# the browser tests with --browser) when they are missing and apt-get may be used;
# otherwise prints the command to run. Never fails: the Python side reports what is missing.
set -u
want=()
ldconfig -p 2>/dev/null | grep -q 'libfluidsynth.so.3' || want+=(libfluidsynth3)
[ -f /usr/share/sounds/sf2/FluidR3_GM.sf2 ] || want+=(fluid-soundfont-gm)
if [ "${1:-}" = "--browser" ] && ! command -v chromium >/dev/null 2>&1; then want+=(chromium); fi
[ ${#want[@]} -eq 0 ] && exit 0
cmd="apt-get install -y --no-install-recommends ${want[*]}"
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "setup: installing ${want[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive $cmd -qq >/dev/null && exit 0
elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  echo "setup: installing ${want[*]}"
  sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive $cmd -qq >/dev/null && exit 0
fi
echo "setup: missing system packages; run:  sudo apt-get update && sudo $cmd" >&2
exit 0
