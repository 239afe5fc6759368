# %pre: the agent's system user and group (kept on erase: files may still carry its uid).
getent group redis-steward >/dev/null || groupadd -r redis-steward
getent passwd redis-steward >/dev/null ||
    useradd -r -g redis-steward -d /var/lib/redis-steward -M -s /sbin/nologin \
        -c "redis-steward node agent" redis-steward
exit 0
