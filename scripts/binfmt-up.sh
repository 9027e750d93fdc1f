#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# binfmt-up.sh: make sure the kernel runs foreign-architecture ELF binaries through QEMU user emulation
# (idempotent, run as root).
#
# Usage: scripts/binfmt-up.sh [ARCH...]      (QEMU names, default: aarch64; arm64 is taken as aarch64)
#
# Why: the engine tests build and run linux/arm64 images on x86_64 machines. Without systemd
# (PID 1 is not an init here) nothing mounts binfmt_misc or loads /usr/lib/binfmt.d at boot, and
# qemu-user-static's postinst registers nothing either, so we do it by hand: install Debian's
# qemu-user-static, mount binfmt_misc, and write the package's own line for each ARCH into
# /proc/sys/fs/binfmt_misc/register. Its flags include F (the kernel opens the interpreter once, at
# registration), so chroots (debootstrap's second stage) and containers use it without a copy of
# qemu inside them.
#
# Measured here: the package's /usr/libexec/qemu-binfmt/*-binfmt-P symlinks (the interpreters its
# binfmt.d lines name) can be missing on disk although dpkg lists them; we then register
# /usr/bin/qemu-ARCH-static itself. Same binary; with flag P it learns the original argv[0] from
# the kernel's AT_FLAGS (Linux >= 5.12), not from the symlink's name.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mnt=/proc/sys/fs/binfmt_misc

die() { echo "binfmt-up: $*" >&2; exit 1; }

((EUID == 0)) || die "must run as root (it mounts binfmt_misc and writes $mnt/register)"
grep -qw binfmt_misc /proc/filesystems ||
  die "this kernel has no binfmt_misc (not in /proc/filesystems): foreign binaries cannot be emulated here"

archs=("$@")
((${#archs[@]})) || archs=(aarch64)
for i in "${!archs[@]}"; do if [[ ${archs[i]} == arm64 ]]; then archs[i]=aarch64; fi; done

for arch in "${archs[@]}"; do
  if [[ ! -r /usr/lib/binfmt.d/qemu-$arch.conf ]]; then
    source "$here/lib-apt.sh"
    apt_install qemu-user-static
    break
  fi
done

if ! awk -v m="$mnt" '$2 == m && $3 == "binfmt_misc" { found = 1 } END { exit !found }' /proc/mounts; then
  mount -t binfmt_misc binfmt_misc "$mnt" ||
    die "cannot mount binfmt_misc at $mnt (unprivileged container? run it on the host)"
fi
# binfmt_misc can be switched off as a whole (echo 0 > status): switch it on.
if [[ $(cat "$mnt/status") != enabled ]]; then echo 1 >"$mnt/status"; fi

# enabled_handler MAGIC: the name of an enabled entry whose magic is MAGIC (hex), if any. Whoever
# registered it (us, binfmt-support, tonistiigi/binfmt: qemu-aarch64 or another name) counts.
enabled_handler() {
  local entry
  for entry in "$mnt"/*; do
    case ${entry##*/} in register | status) continue ;; esac
    [[ -r $entry ]] || continue
    if [[ $(head -n 1 "$entry") == enabled ]] && grep -qx "magic $1" "$entry"; then
      echo "${entry##*/}"; return 0
    fi
  done
  return 1
}

for arch in "${archs[@]}"; do
  conf=/usr/lib/binfmt.d/qemu-$arch.conf
  [[ -r $conf ]] || die "no $conf: qemu-user-static has no emulator for '$arch'"
  line=$(grep -m 1 "^:qemu-$arch:" "$conf") || die "no ':qemu-$arch:' line in $conf"
  # :name:type:offset:magic:mask:interpreter:flags; magic as the kernel shows it: hex, no \x.
  IFS=: read -r _ entry_name _ _ magic _ interpreter flags <<<"$line"
  magic_hex=${magic//\\x/}
  [[ $magic_hex =~ ^[0-9a-f]+$ ]] || magic_hex=unknown

  if handler=$(enabled_handler "$magic_hex"); then
    echo "binfmt-up: $arch: handler '$handler' already enabled" >&2
  elif [[ -e $mnt/$entry_name ]]; then
    # Our name is taken: by this rule switched off (switch it back on), or by an enabled other rule.
    handler=$entry_name
    if [[ $(head -n 1 "$mnt/$handler") != enabled ]]; then
      echo 1 >"$mnt/$handler"
      echo "binfmt-up: $arch: enabled handler '$handler' again" >&2
    fi
  else
    if [[ ! -x $interpreter ]]; then
      [[ -x /usr/bin/qemu-$arch-static ]] || die "neither $interpreter nor /usr/bin/qemu-$arch-static exists"
      echo "binfmt-up: $arch: $interpreter is missing, registering /usr/bin/qemu-$arch-static" >&2
      line=${line%:"$interpreter":"$flags"}:/usr/bin/qemu-$arch-static:$flags
    fi
    # One write(2) per rule, the line verbatim: the kernel decodes the \x escapes itself.
    printf '%s\n' "$line" >"$mnt/register" 2>/dev/null ||
      die "the kernel refused to register $arch ($mnt/register not writable: no privilege, or a bad line: $line)"
    echo "binfmt-up: $arch: registered '$entry_name' (flags $flags)" >&2
    handler=$entry_name
  fi

  # Proof: the kernel's own view of the handler.
  [[ $(head -n 1 "$mnt/$handler") == enabled ]] || die "$arch: handler '$handler' is not enabled"
  used=$(awk '$1 == "interpreter" { print $2 }' "$mnt/$handler")
  used_flags=$(awk '$1 == "flags:" { print $2 }' "$mnt/$handler")
  # With F the kernel holds the file open: it works even if the path is gone since.
  [[ $used_flags == *F* || -x $used ]] || die "$arch: handler '$handler' names $used, which is not an executable"
  echo "binfmt-up: $arch: handler '$handler' enabled, flags $used_flags, interpreter $used"
done
