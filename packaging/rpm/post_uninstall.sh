# %postun: on erase ($1 = 0) undo our masks of the packaged redis service. The data, the
# election state and local backups in /var/lib/redis-steward, and the system user, stay.
STATE_DIR=/var/lib/redis-steward
if [ "$1" = 0 ]; then
    for unit in redis.service redis-server.service; do
        mark="$STATE_DIR/.$unit-masked-by-redis-steward"
        if [ -f "$mark" ]; then
            if [ "$(readlink "/etc/systemd/system/$unit")" = /dev/null ]; then
                rm -f "/etc/systemd/system/$unit"
            fi
            rm -f "$mark"
        fi
    done
    rmdir /etc/redis-steward 2>/dev/null || :
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
exit 0
