# %post: who may read the config and secrets, and keeping the distribution's redis service
# out of the way (the agent runs redis itself). $1: 1 on install, 2 on upgrade.
CONF_DIR=/etc/redis-steward
STATE_DIR=/var/lib/redis-steward
if [ ! -d "$STATE_DIR" ]; then
    install -d -o redis-steward -g redis-steward -m 0750 "$STATE_DIR"
fi
chgrp redis-steward "$CONF_DIR" && chmod 0750 "$CONF_DIR"
# Secrets the admin put in place under the conventional names: readable by the agent only
# (key files are refused unless mode 0600).
for f in "$CONF_DIR/password" "$CONF_DIR"/*.key "$CONF_DIR"/tls/*.key; do
    if [ -f "$f" ]; then
        chown redis-steward:redis-steward "$f"
        chmod 0600 "$f"
    fi
done
if [ -d "$CONF_DIR/tls" ]; then
    chgrp redis-steward "$CONF_DIR/tls" && chmod 0750 "$CONF_DIR/tls"
fi
# Mask the packaged redis service (Fedora/RHEL: redis.service; valkey's compat units too),
# remembering which masks are ours so that erasing this package undoes only those.
for unit in redis.service redis-server.service; do
    if [ -e "/usr/lib/systemd/system/$unit" ] && [ ! -e "/etc/systemd/system/$unit" ] &&
        [ ! -L "/etc/systemd/system/$unit" ]; then
        if [ -d /run/systemd/system ]; then
            systemctl stop "$unit" >/dev/null 2>&1 || :
        fi
        mkdir -p /etc/systemd/system
        ln -s /dev/null "/etc/systemd/system/$unit"
        touch "$STATE_DIR/.$unit-masked-by-redis-steward"
    fi
done
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
exit 0
