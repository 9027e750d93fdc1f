#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# registry-up.sh: run a throw-away Docker registry with htpasswd auth on 127.0.0.1:PORT (root).
#
# Usage: scripts/registry-up.sh PORT USER PASSWORD     (PASSWORD "-": read it from stdin)
# Prints the registry pid on stdout. Stop it with scripts/registry-down.sh PORT.
# State: /tmp/registry-PORT.state holds "PID DIR"; DIR (mktemp) holds config, htpasswd, log, data.
#
# Why loopback + plain HTTP: dockerd treats 127.0.0.0/8 registries as insecure-allowed, so no TLS
# and no daemon flag is needed. The password is never put on a long-running process's argv: the
# bcrypt hash is made by `htpasswd -niB` reading stdin, and the registry only gets a config path.
# Idempotent: if our registry already answers on PORT with the same user/password, it is kept.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[[ $# -eq 3 ]] || { echo "usage: $0 PORT USER PASSWORD|-" >&2; exit 2; }
port=$1 user=$2 pw=$3
[[ $pw == - ]] && IFS= read -r pw
state=/tmp/registry-$port.state
url=http://127.0.0.1:$port/v2/
code() { curl -s -o /dev/null -m 2 -w '%{http_code}' "$url" || true; }

source "$here/lib-apt.sh"
apt_install docker-registry apache2-utils curl   # no-op when installed; policy-rc.d keeps its service down
# The Debian package ships a service on :5000 (enabled for systemd, init script otherwise).
# Stop and disable it wherever it may run so it never competes with our instance.
if [[ -d /run/systemd/system ]]; then
  systemctl disable --now docker-registry.service >/dev/null 2>&1 || true
elif [[ -x /etc/init.d/docker-registry ]]; then
  /etc/init.d/docker-registry stop >/dev/null 2>&1 || true
fi

if [[ -r $state ]]; then
  read -r pid dir <"$state"
  if kill -0 "$pid" 2>/dev/null && [[ $(code) == 401 ]] &&
     printf '%s\n' "$pw" | htpasswd -vi "$dir/htpasswd" "$user" >/dev/null 2>&1; then
    echo "$pid"; exit 0                                   # already up with these credentials
  fi
  "$here/registry-down.sh" "$port" >/dev/null
fi
c=$(code); [[ $c == 000 ]] || { echo "registry-up: 127.0.0.1:$port is already in use (HTTP $c)" >&2; exit 1; }

dir=$(mktemp -d "/tmp/registry-$port.XXXXXX")
printf '%s\n' "$pw" | htpasswd -niB "$user" >"$dir/htpasswd"   # printf is a builtin: no argv leak
chmod 600 "$dir/htpasswd"
cat >"$dir/config.yml" <<EOF
version: 0.1
log: {level: info}
storage:
  filesystem: {rootdirectory: $dir/data}
  delete: {enabled: true}
http:
  addr: 127.0.0.1:$port
  secret: $(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
auth:
  htpasswd: {realm: test-registry, path: $dir/htpasswd}
EOF
# setsid: detach from the caller's process group so it outlives the CI step that started it.
setsid docker-registry serve "$dir/config.yml" </dev/null >"$dir/registry.log" 2>&1 &
pid=$!
echo "$pid $dir" >"$state"
for _ in $(seq 30); do
  [[ $(code) == 401 ]] && { echo "$pid"; exit 0; }
  kill -0 "$pid" 2>/dev/null || break
  sleep 1
done
echo "registry-up: registry did not answer 401 on $url; log:" >&2
tail -n 20 "$dir/registry.log" >&2
"$here/registry-down.sh" "$port" >/dev/null || true
exit 1
