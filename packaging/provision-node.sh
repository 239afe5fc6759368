#!/usr/bin/env bash
# Provision one node of an HA data store: its config, keys and TLS CA, and (unless
# --config-only) the package and the running service. Used by the Vagrant testbed
# (Vagrantfile) and, in --config-only mode, by the namespace testbed's end-to-end test
# (tests/tests/provision.rs), so both run the same steps.
#
#   provision-node.sh --init-shared DIR
#       Create what all nodes of a data store share, once, in DIR (kept if present):
#       gossip.key and backup.key (32 random bytes, hex), password, and a CA (ca.crt,
#       ca.key) from which every agent issues its node certificate (tls.mode "generate").
#
#   provision-node.sh --shared DIR --node NAME --address IP --nodes NAME=IP,... \
#       --s3-endpoint URL --bucket BUCKET [--data-store ID] [--plan PLAN] [--memory-mb N] \
#       [--deb FILE] [--hook FILE] [--root DIR] [--config-only]
#       Write ROOT/etc/redis-steward/{config.toml,password,gossip.key,backup.key,tls/ca.*}
#       from DIR and the arguments. Without --config-only also install the package (--deb,
#       before the config) and the replacement hook (--hook), check the config, and
#       enable and start redis-steward.service. --root (default /) prefixes every path
#       written and every path in the config, so a test can keep a node in a temp folder.
set -euo pipefail

die() {
    echo "provision-node: $*" >&2
    exit 2
}

rand_hex() { # N bytes of randomness as 2N hex digits
    od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'
}

init_shared() {
    local dir=$1
    mkdir -p "$dir"
    chmod 0700 "$dir"
    (
        umask 077
        for f in gossip.key backup.key; do
            [ -s "$dir/$f" ] || rand_hex 32 >"$dir/$f"
        done
        [ -s "$dir/password" ] || rand_hex 16 >"$dir/password"
        if [ ! -s "$dir/ca.crt" ] || [ ! -s "$dir/ca.key" ]; then
            local ext
            ext=$(mktemp)
            cat >"$ext" <<'EOF'
[req]
distinguished_name = dn
[dn]
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
            openssl ecparam -name prime256v1 -genkey -noout |
                openssl pkcs8 -topk8 -nocrypt -out "$dir/ca.key"
            openssl req -x509 -new -key "$dir/ca.key" -days 3650 \
                -subj "/CN=redis-steward testbed CA" -config "$ext" -extensions v3_ca \
                -out "$dir/ca.crt"
            rm -f "$ext"
        fi
    )
    echo "provision-node: shared material in $dir"
}

SHARED="" NODE="" ADDRESS="" NODES="" S3_ENDPOINT="" BUCKET="" DATA_STORE="testbed"
PLAN="premium" MEMORY_MB="" DEB="" HOOK="" ROOT="" CONFIG_ONLY=0
while [ $# -gt 0 ]; do
    case "$1" in
    --init-shared)
        [ $# -eq 2 ] || die "--init-shared DIR"
        init_shared "$2"
        exit 0
        ;;
    --shared) SHARED=$2; shift ;;
    --node) NODE=$2; shift ;;
    --address) ADDRESS=$2; shift ;;
    --nodes) NODES=$2; shift ;;
    --s3-endpoint) S3_ENDPOINT=$2; shift ;;
    --bucket) BUCKET=$2; shift ;;
    --data-store) DATA_STORE=$2; shift ;;
    --plan) PLAN=$2; shift ;;
    --memory-mb) MEMORY_MB=$2; shift ;;
    --deb) DEB=$2; shift ;;
    --hook) HOOK=$2; shift ;;
    --root) ROOT=${2%/}; shift ;;
    --config-only) CONFIG_ONLY=1 ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done
for v in SHARED NODE ADDRESS NODES S3_ENDPOINT BUCKET; do
    [ -n "${!v}" ] || die "--$(echo "$v" | tr 'A-Z_' 'a-z-') is required (see --help)"
done
for f in gossip.key backup.key password ca.crt ca.key; do
    [ -s "$SHARED/$f" ] || die "$SHARED/$f is missing: run --init-shared $SHARED first"
done

ETC=$ROOT/etc/redis-steward
LIB=$ROOT/var/lib/redis-steward
AGENT_USER=redis-steward

if [ "$CONFIG_ONLY" = 0 ] && [ -n "$DEB" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q "$DEB"
fi

install -d -m 0750 "$ETC" "$ETC/tls"
# Secrets: readable by the agent's user only (key files are refused otherwise).
owner=()
if getent passwd "$AGENT_USER" >/dev/null; then
    owner=(-o "$AGENT_USER" -g "$AGENT_USER")
    chgrp "$AGENT_USER" "$ETC" "$ETC/tls"
fi
install -m 0600 "${owner[@]}" "$SHARED/gossip.key" "$ETC/gossip.key"
install -m 0600 "${owner[@]}" "$SHARED/backup.key" "$ETC/backup.key"
install -m 0600 "${owner[@]}" "$SHARED/password" "$ETC/password"
install -m 0644 "$SHARED/ca.crt" "$ETC/tls/ca.crt"
install -m 0600 "${owner[@]}" "$SHARED/ca.key" "$ETC/tls/ca.key"

members=""
IFS=',' read -ra pairs <<<"$NODES"
for pair in "${pairs[@]}"; do
    [[ $pair == *=* ]] || die "--nodes wants NAME=IP,NAME=IP,..., got $pair"
    members+="  { name = \"${pair%%=*}\", address = \"${pair#*=}\" },"$'\n'
done

config=$(mktemp)
cat >"$config" <<EOF
# Written by packaging/provision-node.sh for node $NODE of data store $DATA_STORE.
# packaging/config.example.toml documents every setting.
data_store_id = "$DATA_STORE"
node_name = "$NODE"
plan = "$PLAN"
data_dir = "$LIB/data"
state_dir = "$LIB/state"

[redis]
bind = ["0.0.0.0"]
port = 6380
password_file = "$ETC/password"
${MEMORY_MB:+memory_limit_mb = $MEMORY_MB}

[tls]
# Every node issues its own certificate from the testbed's shared CA.
mode = "generate"
ca_file = "$ETC/tls/ca.crt"
ca_key_file = "$ETC/tls/ca.key"

[api]
listen = "127.0.0.1:7480"

[sentinel]
port = 26379

[cluster]
advertise_address = "$ADDRESS"
gossip_key_file = "$ETC/gossip.key"
nodes = [
$members]

[backup]
url = "s3://$BUCKET/$DATA_STORE"
key_file = "$ETC/backup.key"

[backup.options]
aws_endpoint = "$S3_ENDPOINT"
aws_allow_http = "true"
aws_region = "us-east-1"
aws_access_key_id = "testbed"
aws_secret_access_key = "testbed"
aws_virtual_hosted_style_request = "false"

# When a node stays unreachable, the primary asks for its replacement: uncomment to have it
# print (to its journal) the command that recreates the VM (--hook installs the script).
# [hooks]
# on_node_lost = ["/usr/local/lib/redis-steward/vagrant-replace-hook.sh"]
# node_lost_after_secs = 60
EOF
install -m 0640 "$config" "$ETC/config.toml"
rm -f "$config"
if [ ${#owner[@]} -gt 0 ]; then
    chgrp "$AGENT_USER" "$ETC/config.toml"
fi
echo "provision-node: wrote $ETC/config.toml for $NODE ($ADDRESS)"

if [ "$CONFIG_ONLY" = 1 ]; then
    exit 0
fi

if [ -n "$HOOK" ]; then
    install -D -m 0755 "$HOOK" /usr/local/lib/redis-steward/vagrant-replace-hook.sh
fi
redis-steward check-config "$ETC/config.toml"
systemctl enable redis-steward.service
systemctl restart redis-steward.service
systemctl --no-pager --lines=0 status redis-steward.service || true
