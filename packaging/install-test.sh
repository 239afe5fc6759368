#!/usr/bin/env bash
# Build the .deb and the .rpm, lint them, and install, run, upgrade, remove and purge them on
# this machine. Made for CI (.ci/run calls it after the test suite): a fresh Debian 12, root,
# no systemd as PID 1. It changes the machine: it installs packages and tools, and creates
# and removes the redis-steward user and /etc/redis-steward and /var/lib/redis-steward, so
# it refuses to run where redis-steward is in use (a running agent or the service enabled).
#
# Without systemd the agent is started the way its unit would start it: as its user, with
# only CAP_NET_ADMIN (bounding and ambient sets), no new privileges, umask 0077, systemd's
# environment, a notify socket (READY/WATCHDOG/STOPPING must arrive) and a journal socket
# (records must carry REDIS_STEWARD_NODE etc.), both served by a small stand-in.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1
USER_NAME=redis-steward
ETC=/etc/redis-steward
LIB=/var/lib/redis-steward
# Ports of the sample config: away from the defaults, which tests and demos use, and from
# the ephemeral range that tests' free ports come from.
PORT=16380
SENTINEL_PORT=16379
API=127.0.0.1:17480

step() { echo "==> $*"; }
fail() {
    echo "install-test: FAILED: $*" >&2
    exit 1
}
PASSED=0
check() { # description, command...
    local what=$1
    shift
    if ! "$@"; then
        fail "$what"
    fi
    PASSED=$((PASSED + 1))
    echo "    ok: $what"
}
mode_of() { stat -c '%U:%G %a' "$1"; }

WORK=$(mktemp -d)
chmod 0755 "$WORK"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

# (Agents that tests start from a build tree are no concern: only an installed one is.)
for pid in $(pgrep -x redis-steward || true); do
    if [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = /usr/bin/redis-steward ]; then
        fail "an installed redis-steward runs here (pid $pid); not touching it"
    fi
done
if [ -e /etc/systemd/system/multi-user.target.wants/redis-steward.service ]; then
    fail "redis-steward.service is enabled here; not touching it"
fi

step "tools"
apt-get install -y -q --no-install-recommends \
    lintian rpm redis-server redis-tools openssl util-linux procps adduser python3
if ! cargo deb --version 2>/dev/null | grep -q "$CARGO_DEB_VERSION"; then
    cargo install --locked "cargo-deb@$CARGO_DEB_VERSION"
fi
if ! cargo generate-rpm --version 2>/dev/null | grep -q "$CARGO_GENERATE_RPM_VERSION"; then
    cargo install --locked "cargo-generate-rpm@$CARGO_GENERATE_RPM_VERSION"
fi

step "build"
cargo build --release --locked -p redis-steward
rm -rf target/debian target/generate-rpm
# The same files as a later revision first, for the upgrade (cargo deb replaces the .deb
# it made before).
mkdir -p "$WORK/upgrade"
cargo deb -p redis-steward --no-build --deb-revision 2 --output "$WORK/upgrade/"
cargo deb -p redis-steward --no-build
cargo generate-rpm -p agent
DEB=$(ls target/debian/redis-steward_*-1_*.deb)
DEB2=$(ls "$WORK"/upgrade/redis-steward_*-2_*.deb)
RPM=$(ls target/generate-rpm/redis-steward-*.rpm)
echo "    $DEB $DEB2 $RPM"

step "lintian"
# Errors fail; warnings are shown. Overrides live in the package, each with its reason.
lintian --fail-on error --info --display-level '>=warning' "$DEB"
echo "    ok: no lintian errors"

step "rpm layout"
rpm -qpil "$RPM"
rpm -qp --scripts "$RPM" | grep -q useradd || fail "the .rpm has no %pre creating the user"

step "the .deb: install"
if dpkg -s redis-steward >/dev/null 2>&1; then
    dpkg -P redis-steward
fi
if getent passwd "$USER_NAME" >/dev/null; then
    userdel "$USER_NAME" # left by an earlier run: the postinst must create it
fi
rm -rf "$ETC" "$LIB"
dpkg -i "$DEB"

check "system user with no login, home $LIB" \
    test "$(getent passwd "$USER_NAME" | cut -d: -f6,7)" = "$LIB:/usr/sbin/nologin"
uid=$(id -u "$USER_NAME")
check "system uid ($uid)" test "$uid" -lt 1000
check "binary" test "$(mode_of /usr/bin/redis-steward)" = "root:root 755"
check "redis-steward --version" test "$(redis-steward --version)" = "redis-steward $(dpkg-query -W -f='${Version}' redis-steward | cut -d- -f1)"
check "config dir readable by the agent only" test "$(mode_of $ETC)" = "root:$USER_NAME 750"
check "config readable by the agent only" test "$(mode_of $ETC/config.toml)" = "root:$USER_NAME 640"
check "config is a conffile" sh -c "dpkg-query -W -f='\${Conffiles}' redis-steward | grep -q ' $ETC/config.toml '"
check "state dir" test "$(mode_of $LIB)" = "$USER_NAME:$USER_NAME 750"
UNIT=$(dpkg -L redis-steward | grep '/systemd/system/redis-steward.service$')
check "unit $UNIT" test -f "$UNIT"
check "man page" test -f /usr/share/man/man1/redis-steward.1.gz
check "redis-server.service masked" test "$(readlink /etc/systemd/system/redis-server.service)" = /dev/null
check "unit not enabled before it is configured" test ! -e /etc/systemd/system/multi-user.target.wants/redis-steward.service

step "systemd-analyze"
verify=$(systemd-analyze verify --man=no "$UNIT" 2>&1) || fail "systemd-analyze verify: $verify"
[ -z "$verify" ] || fail "systemd-analyze verify says: $verify"
echo "    ok: systemd-analyze verify is silent"
# --threshold counts in tenths: 25 is an exposure of 2.5.
systemd-analyze security --offline=true --threshold=25 --no-pager "$UNIT" | tail -1
echo "    ok: exposure at most 2.5"

step "configure as an operator would"
sed -i \
    -e "s/^port = 6380\$/port = $PORT/" \
    -e "s/^port = 26379\$/port = $SENTINEL_PORT/" \
    -e 's/^bind = \["0.0.0.0"\]$/bind = ["127.0.0.1"]/' \
    -e "s/^listen = \"127.0.0.1:7480\"\$/listen = \"$API\"/" \
    -e 's/^# memory_limit_mb = 4096$/memory_limit_mb = 1024/' \
    "$ETC/config.toml"
echo "# edited by install-test" >>"$ETC/config.toml"
PASSWORD=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
install -o "$USER_NAME" -g "$USER_NAME" -m 0600 /dev/null "$ETC/password"
printf '%s\n' "$PASSWORD" >"$ETC/password"
redis-steward check-config "$ETC/config.toml"

step "run the agent as its unit would"
cat >"$WORK/fake-systemd.py" <<'EOF'
# Stand-in for systemd's notify socket and journald's native socket: one line per datagram
# in <name>.log (newlines shown as '|').
import os, select, socket, sys
d = sys.argv[1]
logs = {}
for name in ("notify", "journal"):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = os.path.join(d, name)
    s.bind(path)
    os.chmod(path, 0o666)
    logs[s] = open(os.path.join(d, name + ".log"), "ab", buffering=0)
open(os.path.join(d, "listening"), "w").close()
while True:
    for s in select.select(list(logs), [], [])[0]:
        logs[s].write(s.recv(1 << 20).replace(b"\n", b"|") + b"\n")
EOF
python3 "$WORK/fake-systemd.py" "$WORK" &
PIDS+=($!)
for _ in $(seq 50); do [ -e "$WORK/listening" ] && break; sleep 0.1; done
: >"$WORK/agent.stderr"
# As the unit: User=, CapabilityBoundingSet=/AmbientCapabilities=CAP_NET_ADMIN,
# NoNewPrivileges=, UMask=0077, systemd's environment (JOURNAL_STREAM naming stderr makes
# the agent pick the journal on its own, as under systemd). The hard open-files limit stays
# this machine's (LimitNOFILE= cannot be raised without CAP_SYS_RESOURCE).
setpriv --reuid="$USER_NAME" --regid="$USER_NAME" --init-groups \
    --inh-caps=-all,+net_admin --ambient-caps=-all,+net_admin --bounding-set=-all,+net_admin \
    --no-new-privs \
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
    HOME="$LIB" USER="$USER_NAME" LOGNAME="$USER_NAME" SHELL=/usr/sbin/nologin \
    NOTIFY_SOCKET="$WORK/notify" WATCHDOG_USEC=2000000 \
    JOURNAL_STREAM="$(stat -c '%d:%i' "$WORK/agent.stderr")" \
    REDIS_STEWARD_JOURNAL_SOCKET="$WORK/journal" \
    sh -c "umask 0077 && exec /usr/bin/redis-steward run --config $ETC/config.toml" \
    2>>"$WORK/agent.stderr" &
AGENT=$!
PIDS+=("$AGENT")
ready=0
for _ in $(seq 300); do
    if grep -q '^READY=1' "$WORK/notify.log" 2>/dev/null; then
        ready=1
        break
    fi
    kill -0 "$AGENT" 2>/dev/null || break
    sleep 0.1
done
if [ "$ready" != 1 ]; then
    cat "$WORK/agent.stderr" "$WORK/journal.log" >&2 || true
    fail "no READY=1 from the agent within 30 s"
fi
echo "    ok: READY=1"
CA=$LIB/state/tls/ca.crt
rcli() { redis-cli --tls --cacert "$CA" -h 127.0.0.1 -p "$PORT" --no-auth-warning -a "$PASSWORD" "$@"; }
check "redis answers over TLS" test "$(rcli PING)" = PONG
check "writes over TLS" test "$(rcli SET installed yes)" = OK
maxclients_fit() { rcli INFO clients | tr -d '\r' | grep -qx 'maxclients:10000'; }
check "maxclients = max(10000, 4 x 1024 MB)" maxclients_fit
status=$(redis-steward status --json --api "$API")
REDIS_PID=$(printf '%s' "$status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["redis"]["pid"])')
check "agent runs as $USER_NAME" test "$(stat -c %U /proc/$AGENT)" = "$USER_NAME"
check "redis-server runs as $USER_NAME" test "$(stat -c %U /proc/$REDIS_PID)" = "$USER_NAME"
check "redis-server is the agent's child" test "$(ps -o ppid= -p "$REDIS_PID" | tr -d ' ')" = "$AGENT"
check "the agent holds CAP_NET_ADMIN only" test "$(awk '/^CapEff/ {print $2}' /proc/$AGENT/status)" = 0000000000001000
check "redis-server holds no capability" test "$(awk '/^CapEff/ {print $2}' /proc/$REDIS_PID/status)" = 0000000000000000
check "state dir: the agent's group may enter (for the API token), secrets stay 0600" test "$(mode_of $LIB/state)" = "$USER_NAME:$USER_NAME 750"
check "API token readable by root and the agent's group" test "$(mode_of $LIB/state/api.token)" = "$USER_NAME:$USER_NAME 640"
echo wrong-token >"$WORK/wrong.token"
check "a POST without the API token is refused" sh -c "redis-steward backup now --api $API --token-file $WORK/wrong.token 2>&1 | grep -q 'needs the API token'"
check "data dir" test "$(stat -c %U $LIB/data)" = "$USER_NAME"
check "journal records carry the node" grep -q 'REDIS_STEWARD_NODE=node-1' "$WORK/journal.log"
check "journal records carry redis's own lines" grep -q 'REDIS_STEWARD_TARGET=redis' "$WORK/journal.log"
check "journal records have priorities" grep -q 'PRIORITY=6' "$WORK/journal.log"
check "nothing logged to stderr" test ! -s "$WORK/agent.stderr"
for _ in $(seq 50); do grep -q '^WATCHDOG=1' "$WORK/notify.log" && break; sleep 0.1; done
check "watchdog pings" grep -q '^WATCHDOG=1' "$WORK/notify.log"
check "STATUS= line" grep -q '^STATUS=primary, redis pid' "$WORK/notify.log"
kill -TERM "$AGENT"
rc=0
wait "$AGENT" || rc=$?
check "clean exit on SIGTERM" test "$rc" = 0
check "STOPPING=1" grep -q '^STOPPING=1' "$WORK/notify.log"
check "redis stopped with the agent" sh -c "! kill -0 $REDIS_PID 2>/dev/null"

step "the .deb: upgrade keeps the edited config"
dpkg -i "$DEB2"
check "upgraded" test "$(dpkg-query -W -f='${Version}' redis-steward | cut -d- -f2)" = 2
check "edited config kept" grep -q '^# edited by install-test$' "$ETC/config.toml"
check "no .dpkg-dist beside it" test ! -e "$ETC/config.toml.dpkg-dist"
check "permissions kept" test "$(mode_of $ETC/config.toml)" = "root:$USER_NAME 640"
check "secret still the agent's" test "$(mode_of $ETC/password)" = "$USER_NAME:$USER_NAME 600"
check "data kept" test -d "$LIB/data/appendonlydir"

step "the .deb: remove, then purge"
dpkg -r redis-steward
check "binary gone" test ! -e /usr/bin/redis-steward
check "config kept on remove" test -f "$ETC/config.toml"
check "redis-server.service unmasked" test ! -e /etc/systemd/system/redis-server.service
dpkg -P redis-steward
check "package gone" sh -c '! dpkg -s redis-steward >/dev/null 2>&1'
check "config gone" test ! -e "$ETC/config.toml"
check "no stat overrides left" sh -c "! dpkg-statoverride --list | grep -q redis-steward"
# What stays, by policy (packaging/debian/postrm): the admin's secrets, the data store's
# data and election state, and the system user.
left=$(find "$ETC" -mindepth 1 -printf '%P\n' | sort | tr '\n' ' ')
check "only the admin's secret left in $ETC ($left)" test "$left" = "password "
check "data kept on purge" test -d "$LIB/data/appendonlydir"
check "user kept on purge" getent passwd "$USER_NAME"
check "nothing else of the package on disk" sh -c "! find /usr /lib /etc -path $ETC -prune -o -name '*redis-steward*' -print | grep -q ."

step "the .rpm: install with rpm -i --nodeps, then erase"
rm -rf "$ETC" "$LIB"
userdel "$USER_NAME"
rpm -i --nodeps --force-debian "$RPM"
check "rpm installed" rpm -q redis-steward
check "%pre created the user" getent passwd "$USER_NAME"
check "binary" test "$(mode_of /usr/bin/redis-steward)" = "root:root 755"
check "config readable by the agent only" test "$(mode_of $ETC/config.toml)" = "root:$USER_NAME 640"
check "%post: config dir" test "$(mode_of $ETC)" = "root:$USER_NAME 750"
check "%post: state dir" test "$(mode_of $LIB)" = "$USER_NAME:$USER_NAME 750"
check "%post: redis-server.service masked" test "$(readlink /etc/systemd/system/redis-server.service)" = /dev/null
check "config is %config(noreplace)" sh -c "rpm -qc redis-steward | grep -qx $ETC/config.toml"
check "redis-steward --version" redis-steward --version
rpm -e --nodeps redis-steward
check "rpm erased" sh -c '! rpm -q redis-steward >/dev/null 2>&1'
check "binary gone" test ! -e /usr/bin/redis-steward
check "%postun: redis-server.service unmasked" test ! -e /etc/systemd/system/redis-server.service
check "%postun: config dir gone" test ! -e "$ETC"
check "user kept" getent passwd "$USER_NAME"

step "leave the machine as CI found it"
rm -rf "$LIB"
userdel "$USER_NAME"
echo "install-test: $PASSED passed, 0 failed"
