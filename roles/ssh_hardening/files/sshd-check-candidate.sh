#!/bin/sh
# Check a candidate sshd drop-in in the context of the live configuration, without
# touching a live file. The ssh_hardening role runs it with the candidate on stdin:
#
#   sh -c "<this script>" sshd-check-candidate MAIN DIR NAME SSHD < candidate
#
#   MAIN  the live main configuration (/etc/ssh/sshd_config)
#   DIR   the drop-in directory that MAIN reads with "Include DIR/*.conf"
#   NAME  the file name the candidate will get in DIR (00-keel-hardening.conf)
#   SSHD  the sshd binary (/usr/sbin/sshd)
#
# Why not "validate: sshd -t -f %s" on the template: that parses the drop-in alone, as if
# it were the whole configuration. It misses what only the combination shows (an option
# set twice in conflicting ways, a Match block elsewhere, a file that sorts before ours
# and wins because sshd keeps the first value it reads), and "sshd -t" cannot add an
# Include on the command line. So this script builds a private copy in which exactly one
# thing differs from the live configuration: every live drop-in except NAME, the
# candidate as NAME, and MAIN with that one Include line pointed at the copy. Every other
# path (host keys, moduli, other Includes) stays the live one. "sshd -T" then parses it
# as the daemon would parse the result: same order, same first-value-wins rules, same
# host keys. On success it prints the effective settings (one "keyword value" per line)
# for the role to compare with what it asked for; on any error it exits non-zero with
# sshd's message on stderr. The copy is removed on every exit.
set -eu
main=$1 dir=$2 name=$3 sshd=$4

stage=$(mktemp -d "${TMPDIR:-/tmp}/keel-sshd-check.XXXXXX")  # mode 0700, root's
trap 'rm -rf "$stage"' EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir "$stage/sshd_config.d"

for f in "$dir"/*.conf; do
  [ -e "$f" ] || continue             # no drop-ins: the pattern stayed literal
  [ "${f##*/}" = "$name" ] && continue  # the live version of the candidate
  cp -p "$f" "$stage/sshd_config.d/"
done
cat > "$stage/sshd_config.d/$name"

# The Include line, keyword in any case, pointed at the copy; nothing else changes.
dir_re=$(printf '%s\n' "$dir" | sed 's/[][\.*^$]/\\&/g')
sed "s|^\([[:space:]]*[Ii][Nn][Cc][Ll][Uu][Dd][Ee][[:space:]]\{1,\}\)$dir_re/\*\.conf[[:space:]]*\$|\1$stage/sshd_config.d/*.conf|" \
  "$main" > "$stage/sshd_config"
if ! grep -q "$stage/sshd_config.d/\*\.conf" "$stage/sshd_config"; then
  echo "$main has no 'Include $dir/*.conf' line, so sshd would never read $dir/$name" >&2
  exit 3
fi

rc=0
"$sshd" -T -f "$stage/sshd_config" > "$stage/effective" 2> "$stage/errors" || rc=$?
# Name the files in sshd's messages by their live paths, the candidate as such.
sed -e "s|$stage/sshd_config.d/$name|$dir/$name (candidate)|g" \
  -e "s|$stage/sshd_config.d/|$dir/|g" -e "s|$stage/sshd_config|$main|g" "$stage/errors" >&2
if [ "$rc" -eq 0 ]; then
  cat "$stage/effective"
fi
exit "$rc"
