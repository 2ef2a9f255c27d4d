#!/usr/bin/env bash
# A real OpenStack on loopback for the OpenStack driver's tests: keystone, glance, placement, nova (fake virt
# driver) and neutron (ML2 "test" mechanism driver) from PyPI, in their own virtualenv, using the MariaDB and
# RabbitMQ of this machine. Everything with state lives in $SKYPORT_OPENSTACK_DIR (default
# /var/tmp/skyport-openstack), never in the repository.
#
#   stack.sh install   service virtualenv (pinned versions) + qemu-img; skips what is already there
#   stack.sh up        configs, databases, keystone bootstrap, services, test fixtures (idempotent)
#   stack.sh down      stop the processes this script started (PIDs in $DIR/run)
#   stack.sh reset     down, drop the databases and state, up again
#   stack.sh status    processes, ports, memory
#   stack.sh env       print the connection details (source it: eval "$(stack.sh env)")
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
STACK=${SKYPORT_OPENSTACK_DIR:-/var/tmp/skyport-openstack}
VENV=$STACK/svc-venv
PINS=(keystone==30.0.0 nova==34.0.0 neutron==29.0.0 glance==33.0.0 openstack-placement==16.0.0)
EXTRAS=(PyMySQL gunicorn python-memcached openstacksdk)
DATABASES=(keystone glance nova_api nova nova_cell0 placement neutron)
COMPUTE_HOST=host-ovs-filter-active
# name:port of the WSGI services, in start order
APIS=(keystone:5000 glance:9292 placement:8778 nova-api:8774 neutron:9696)
DAEMONS=(nova-conductor nova-scheduler nova-compute)

started=$SECONDS
say() { printf '[openstack %4ss] %s\n' "$((SECONDS - started))" "$*"; }
die() { say "ERROR: $*" >&2; exit 1; }

mkdir -p "$STACK"
STACK=$(cd "$STACK" && pwd -P)
case "$STACK/" in
  "$(cd "$REPO" && pwd -P)"/*) die "SKYPORT_OPENSTACK_DIR=$STACK is inside the repository: choose a directory outside it" ;;
esac
VENV=$STACK/svc-venv

# --- install -----------------------------------------------------------------------------------------------
installed_ok() {
  [[ -x $VENV/bin/python ]] || return 1
  "$VENV/bin/python" - "${PINS[@]}" <<'PY' >/dev/null 2>&1
import sys
from importlib.metadata import version

for pin in sys.argv[1:]:
    name, _, wanted = pin.partition("==")
    if version(name) != wanted:
        sys.exit(1)
for name in ("PyMySQL", "gunicorn", "python-memcached", "openstacksdk"):
    version(name)
PY
}

cmd_install() {
  if ! command -v qemu-img >/dev/null; then
    say "installing qemu-utils (qemu-img makes the test image)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-utils >/dev/null
  fi
  if installed_ok; then
    say "service virtualenv $VENV already has ${PINS[*]}"
    return 0
  fi
  say "installing ${PINS[*]} into $VENV"
  local uv=$REPO/.tools/bin/uv python
  python=$(command -v python3.11 || command -v python3)
  rm -rf "$VENV"
  if [[ -x $uv ]]; then
    "$uv" venv --quiet --python "$python" "$VENV"
    VIRTUAL_ENV=$VENV "$uv" pip install --quiet "${PINS[@]}" "${EXTRAS[@]}"
  else
    "$python" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PINS[@]}" "${EXTRAS[@]}"
  fi
  installed_ok || die "the service virtualenv does not have the pinned versions after installing"
  say "installed ($(du -sh "$VENV" | cut -f1))"
}

# --- MariaDB and RabbitMQ (machine services: started when not answering, never stopped here) -------------
mysql_up() { mysqladmin -uroot --connect-timeout=2 ping >/dev/null 2>&1; }
rabbit_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

wait_for() {  # wait_for SECONDS what command...
  local limit=$1 what=$2
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "timed out after ${limit}s waiting for $what"
    sleep 1
  done
}

ensure_backends() {
  if ! mysql_up; then
    say "MariaDB is not answering: starting it"
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
    wait_for 60 MariaDB mysql_up
  fi
  if ! rabbit_up; then
    say "RabbitMQ is not answering: starting it"
    rabbitmq-server -detached
    wait_for 90 RabbitMQ rabbit_up
  fi
}

# --- configuration ---------------------------------------------------------------------------------------------
render() {  # render TEMPLATE DEST: @STACK@ and @AUTHTOKEN:<user>@ (the [keystone_authtoken] block)
  local src=$HERE/templates/$1 dest=$2 line
  mkdir -p "$(dirname "$dest")"
  while IFS= read -r line || [[ -n $line ]]; do
    if [[ $line =~ ^@AUTHTOKEN:([a-z]+)@$ ]]; then
      sed "s/@SVC@/${BASH_REMATCH[1]}/g" "$HERE/templates/authtoken.inc"
    else
      printf '%s\n' "$line"
    fi
  done <"$src" | sed "s#@STACK@#$STACK#g" >"$dest"
}

write_configs() {
  mkdir -p "$STACK"/{etc,state/keystone,state/nova,state/neutron,state/glance/images,state/glance/staging} \
    "$STACK"/{state/glance/tasks,logs,run,locks}
  render keystone.conf "$STACK/etc/keystone/keystone.conf"
  render glance-api.conf "$STACK/etc/glance/glance-api.conf"
  render placement.conf "$STACK/etc/placement/placement.conf"
  render nova.conf "$STACK/etc/nova/nova.conf"
  render neutron.conf "$STACK/etc/neutron/neutron.conf"
  render ml2_conf.ini "$STACK/etc/neutron/plugins/ml2/ml2_conf.ini"
  cp "$VENV/etc/nova/api-paste.ini" "$STACK/etc/nova/api-paste.ini"
  cp "$VENV/etc/neutron/api-paste.ini" "$STACK/etc/neutron/api-paste.ini"
  cp "$VENV/etc/glance/glance-api-paste.ini" "$STACK/etc/glance/glance-api-paste.ini"
  local spec name port app
  declare -A apps=(
    [keystone]=keystone.wsgi.api:application [glance]=glance.wsgi.api:application
    [placement]=placement.wsgi.api:application [nova-api]=nova.wsgi.osapi_compute:application
    [neutron]=neutron.wsgi.api:application
  )
  mkdir -p "$STACK/etc/gunicorn"
  for spec in "${APIS[@]}"; do
    name=${spec%%:*} port=${spec##*:} app=${apps[$name]}
    sed -e "s#@STACK@#$STACK#g" -e "s#@APP@#$app#g" -e "s#@PORT@#$port#g" -e "s#@NAME@#$name#g" \
      "$HERE/templates/gunicorn.py" >"$STACK/etc/gunicorn/$name.py"
  done
}

create_databases() {
  local sql="CREATE USER IF NOT EXISTS 'os'@'127.0.0.1' IDENTIFIED BY 'os';" db
  for db in "${DATABASES[@]}"; do
    sql+="CREATE DATABASE IF NOT EXISTS $db; GRANT ALL ON $db.* TO 'os'@'127.0.0.1';"
  done
  mysql -uroot -e "$sql"
}

# --- processes ---------------------------------------------------------------------------------------------------
starttime() {  # field 22 of /proc/PID/stat, counted after the command name (which may hold spaces)
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  stat=${stat##*) }
  awk '{print $20}' <<<"$stat"
}

alive() {  # alive NAME: the process in run/NAME.pid runs and is ours (its start time tells a recycled PID apart)
  local pidfile=$STACK/run/$1.pid pid since
  [[ -f $pidfile ]] || return 1
  read -r pid since <"$pidfile"
  [[ -n $since && "$(starttime "$pid")" == "$since" ]]
}

start() {  # start NAME command... (own session and process group, so that down can stop its workers too)
  local name=$1
  shift
  if alive "$name"; then
    return 0
  fi
  setsid nohup "$@" >>"$STACK/logs/$name.out" 2>&1 </dev/null &
  echo "$! $(starttime $!)" >"$STACK/run/$name.pid"
}

start_api() {  # start_api NAME [env assignments...]
  local name=$1
  shift
  start "$name" env "$@" "$VENV/bin/gunicorn" -c "$STACK/etc/gunicorn/$name.py"
}

http_up() { curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$1/"; }

compute_ready() {  # compute_ready SINCE: nova-compute reported in after SINCE (UTC) and its host is mapped to cell1
  local sql="SELECT COUNT(*) FROM nova_api.host_mappings m JOIN nova.services s ON s.host = m.host
    WHERE m.host = '$COMPUTE_HOST' AND s.binary = 'nova-compute' AND s.deleted = 0 AND s.updated_at >= '$1'"
  [[ "$(mysql -uroot -N -e "$sql" 2>/dev/null)" -ge 1 ]]
}

stack_up() {
  local spec
  for spec in "${APIS[@]}"; do alive "${spec%%:*}" && http_up "${spec##*:}" || return 1; done
  for spec in "${DAEMONS[@]}"; do alive "$spec" || return 1; done
  [[ -f $STACK/skyport.env ]]
}

cmd_up() {
  installed_ok || die "the service virtualenv is missing or incomplete: run '$0 install' first"
  if stack_up; then
    say "already up (connection details: $STACK/skyport.env)"
    return 0
  fi
  ensure_backends
  write_configs
  create_databases
  local conf=$STACK/etc bin=$VENV/bin logs=$STACK/logs
  export PATH="$VENV/bin:$PATH"
  say "syncing databases"
  # the syncs are independent: run them side by side, the others niced since everything waits on keystone
  nice -n 10 "$bin/glance-manage" --config-file "$conf/glance/glance-api.conf" db_sync >"$logs/sync-glance.out" 2>&1 &
  local p_glance=$!
  nice -n 10 "$bin/placement-manage" --config-file "$conf/placement/placement.conf" db sync \
    >"$logs/sync-placement.out" 2>&1 &
  local p_placement=$!
  nice -n 10 "$bin/neutron-db-manage" --config-file "$conf/neutron/neutron.conf" \
    --config-file "$conf/neutron/plugins/ml2/ml2_conf.ini" upgrade heads >"$logs/sync-neutron.out" 2>&1 &
  local p_neutron=$!
  (
    nm=(nice -n 10 "$bin/nova-manage" --config-file "$conf/nova/nova.conf")
    "${nm[@]}" api_db sync
    "${nm[@]}" cell_v2 map_cell0
    "${nm[@]}" cell_v2 list_cells | grep -q ' cell1 ' || "${nm[@]}" cell_v2 create_cell --name cell1
    "${nm[@]}" db sync
  ) >"$logs/sync-nova.out" 2>&1 &
  local p_nova=$!

  local km=("$bin/keystone-manage" --config-file "$conf/keystone/keystone.conf")
  "${km[@]}" db_sync >"$logs/sync-keystone.out" 2>&1 || die "keystone db_sync failed: see $logs/sync-keystone.out"
  "${km[@]}" fernet_setup --keystone-user root --keystone-group root >>"$logs/sync-keystone.out" 2>&1
  "${km[@]}" credential_setup --keystone-user root --keystone-group root >>"$logs/sync-keystone.out" 2>&1
  "${km[@]}" bootstrap --bootstrap-password admin --bootstrap-region-id RegionOne \
    --bootstrap-admin-url http://127.0.0.1:5000/v3/ --bootstrap-internal-url http://127.0.0.1:5000/v3/ \
    --bootstrap-public-url http://127.0.0.1:5000/v3/ >>"$logs/sync-keystone.out" 2>&1
  start_api keystone "OS_KEYSTONE_CONFIG_DIR=$conf/keystone"
  wait_for 60 "keystone on :5000" http_up 5000
  say "keystone answers"
  "$bin/python" "$HERE/setup_cloud.py" identity >"$logs/setup-identity.out" 2>&1 \
    || die "identity set-up failed: see $logs/setup-identity.out"
  say "identity ready"

  local p
  for p in glance:$p_glance placement:$p_placement neutron:$p_neutron nova:$p_nova; do
    wait "${p##*:}" || die "${p%%:*} database sync failed: see $logs/sync-${p%%:*}.out"
  done
  say "databases synced"

  start_api glance "OS_GLANCE_CONFIG_DIR=$conf/glance"
  start_api placement "OS_PLACEMENT_CONFIG_DIR=$conf/placement"
  start_api nova-api "OS_NOVA_CONFIG_DIR=$conf/nova"
  # neutron's "test" mechanism driver asserts on its in-memory state: assertions off, or port binding fails
  start_api neutron PYTHONOPTIMIZE=1 "OS_NEUTRON_CONFIG_DIR=$conf/neutron" \
    "OS_NEUTRON_CONFIG_FILES=neutron.conf;plugins/ml2/ml2_conf.ini"
  local since
  since=$(date -u '+%F %T')
  for p in "${DAEMONS[@]}"; do
    start "$p" "$bin/$p" --config-file "$conf/nova/nova.conf"
  done
  for spec in "${APIS[@]}"; do
    wait_for 120 "${spec%%:*} on :${spec##*:}" http_up "${spec##*:}"
  done
  say "all APIs answer"
  wait_for 120 "nova-compute on $COMPUTE_HOST to report in (and be mapped to cell1)" compute_ready "$since"
  say "compute host $COMPUTE_HOST discovered"
  "$bin/python" "$HERE/setup_cloud.py" fixtures "$STACK" >"$logs/setup-fixtures.out" 2>&1 \
    || die "test fixtures failed: see $logs/setup-fixtures.out"
  say "up: flavors, networks, image and project demo ready (eval \"\$($0 env)\" for the connection details)"
}

cmd_down() {
  local pidfile name pid left
  shopt -s nullglob
  local pids=()
  for pidfile in "$STACK"/run/*.pid; do
    name=$(basename "$pidfile" .pid)
    if alive "$name"; then
      read -r pid _ <"$pidfile"
      kill -TERM -- "-$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
    rm -f "$pidfile"
  done
  for _ in $(seq 1 30); do
    left=()
    for pid in "${pids[@]}"; do
      pgrep -g "$pid" >/dev/null 2>&1 && left+=("$pid")
    done
    ((${#left[@]} == 0)) && break
    sleep 1
  done
  for pid in "${left[@]}"; do
    say "process group $pid still running after 30 s: killing it"
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
  say "down (${#pids[@]} process group(s) stopped)"
}

cmd_reset() {
  cmd_down
  if mysql_up; then
    local sql="" db
    for db in "${DATABASES[@]}"; do sql+="DROP DATABASE IF EXISTS $db;"; done
    mysql -uroot -e "$sql"
  fi
  rm -rf "$STACK"/state "$STACK"/locks "$STACK"/skyport.env
  say "databases and state dropped"
  cmd_up
}

cmd_status() {
  local spec name rss total=0 pid
  for spec in "${APIS[@]}" "${DAEMONS[@]}"; do
    name=${spec%%:*}
    if alive "$name"; then
      read -r pid _ <"$STACK/run/$name.pid"
      rss=$(ps -o rss= -g "$pid" | awk '{s += $1} END {print int(s / 1024)}')
      total=$((total + rss))
      printf '%-15s running  pid %-8s %5s MB' "$name" "$pid" "$rss"
      [[ $spec == *:* ]] && { http_up "${spec##*:}" && printf '  :%s answers' "${spec##*:}" || printf '  :%s DOWN' "${spec##*:}"; }
      echo
    else
      printf '%-15s stopped\n' "$name"
    fi
  done
  echo "total RSS of the OpenStack processes: $total MB"
  stack_up
}

cmd_env() {
  [[ -f $STACK/skyport.env ]] || die "no $STACK/skyport.env: run '$0 up' first"
  cat "$STACK/skyport.env"
}

case "${1:-}" in
  install) cmd_install ;;
  up) cmd_up ;;
  down) cmd_down ;;
  reset) cmd_reset ;;
  status) cmd_status ;;
  env) cmd_env ;;
  *) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
