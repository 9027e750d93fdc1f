#!/usr/bin/env bash
# nginx-up.sh DIR PORT [RATE]: serve DIR on 127.0.0.1:PORT with Debian's nginx (for the fetch benchmark).
# RATE (e.g. 200m) caps each response's speed, so a benchmark can interrupt a transfer half-way.
# Access log: /tmp/nginx-PORT/access.log, one "<status> <path> <body bytes sent>" line per request.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dir=$(cd "$1" && pwd); port=$2; rate=${3:-0}
if ! command -v nginx >/dev/null; then
  source "$here/lib-apt.sh"
  apt_install nginx-light
fi
state=/tmp/nginx-$port
mkdir -p "$state"
if [[ -f $state/nginx.pid ]] && kill -0 "$(cat "$state/nginx.pid")" 2>/dev/null; then
  kill "$(cat "$state/nginx.pid")"; sleep 0.5
fi
cat > "$state/nginx.conf" <<CONF
worker_processes 2;
pid $state/nginx.pid;
error_log $state/error.log;
events { worker_connections 256; }
http {
  log_format bench '\$status \$uri \$body_bytes_sent';
  access_log $state/access.log bench;
  sendfile on;
  server {
    listen 127.0.0.1:$port;
    root $dir;
    limit_rate $rate;
    client_body_temp_path $state/body;
    proxy_temp_path $state/proxy;
    fastcgi_temp_path $state/fastcgi;
    uwsgi_temp_path $state/uwsgi;
    scgi_temp_path $state/scgi;
  }
}
CONF
: > "$state/access.log"
nginx -c "$state/nginx.conf"
for _ in $(seq 50); do
  curl -s -o /dev/null "http://127.0.0.1:$port/" && exit 0
  sleep 0.1
done
echo "nginx did not answer on 127.0.0.1:$port" >&2
exit 1
