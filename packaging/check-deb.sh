#!/usr/bin/env bash
# Checks a built package: control fields, conffiles, maintainer scripts, and that every file the
# README's install section promises is in it. Usage: packaging/check-deb.sh PATH.deb
set -euo pipefail
deb=$1
fail() { echo "check-deb: $*" >&2; exit 1; }

info=$(dpkg-deb --info "$deb")
for field in "Package: nprov-sync" "Depends: .*ca-certificates" "Maintainer: " "Description: "; do
  grep -q "^ $field" <<<"$info" || fail "control has no '$field'"
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dpkg-deb --control "$deb" "$work/control"
[ "$(cat "$work/control/conffiles")" = "/etc/nprov-sync/nprov.toml" ] \
  || fail "conffiles: $(cat "$work/control/conffiles")"
for script in postinst prerm postrm; do
  [ -x "$work/control/$script" ] || fail "$script missing or not executable"
  sh -n "$work/control/$script" || fail "$script does not parse"
done

contents=$(dpkg-deb --contents "$deb" | awk '{print $1 " " $6}')
expect() {
  grep -qE "^$1 \./$2\$" <<<"$contents" || fail "no $2 (mode $1) in the package"
}
expect -rwxr-xr-x usr/bin/nprov-sync
expect -rw-r--r-- etc/nprov-sync/nprov.toml
for unit in nprov-sync.service nprov-sync-once.service nprov-sync-once.timer; do
  expect -rw-r--r-- "usr/lib/systemd/system/$unit"
done
for page in nprov-sync nprov-sync-run nprov-sync-sync nprov-sync-status nprov-sync-config-check; do
  expect -rw-r--r-- "usr/share/man/man1/$page.1.gz"
done
expect -rw-r--r-- usr/share/bash-completion/completions/nprov-sync
expect -rw-r--r-- usr/share/zsh/vendor-completions/_nprov-sync
expect -rw-r--r-- usr/share/fish/vendor_completions.d/nprov-sync.fish
for doc in README.md config.example.toml LICENSE-MIT LICENSE-APACHE copyright \
  prometheus/nprov-sync.rules.yml grafana/nprov-sync.json; do
  expect -rw-r--r-- "usr/share/doc/nprov-sync/$doc"
done

# The packaged configuration is one the binary accepts.
dpkg-deb --extract "$deb" "$work/root"
"$work/root/usr/bin/nprov-sync" config check --config "$work/root/etc/nprov-sync/nprov.toml" >/dev/null \
  || fail "the packaged nprov.toml does not pass config check"
if command -v man >/dev/null 2>&1; then
  MANWIDTH=80 man -l "$work/root/usr/share/man/man1/nprov-sync.1.gz" >/dev/null \
    || fail "man cannot render nprov-sync.1"
else
  echo "check-deb: man is not installed; the page was not rendered"
fi
echo "check-deb: $(basename "$deb") OK ($(grep -c . <<<"$contents") entries)"
