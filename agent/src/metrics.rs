//! Prometheus metrics, served as text at `/metrics` by the local API.

use crate::redis_client::Info;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Mutex;

type Labels = Vec<(String, String)>;

pub struct Metrics {
    registry: Mutex<Registry>,
    pub info: Family<Labels, Gauge>,
    pub redis_up: Gauge,
    pub redis_restarts: Counter,
    pub redis_connected_clients: Gauge,
    pub redis_maxclients: Gauge,
    pub redis_used_memory_bytes: Gauge,
    pub redis_maxmemory_bytes: Gauge,
    pub redis_aof_last_write_ok: Gauge,
    pub nofile_limit: Gauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: Mutex::new(Registry::with_prefix("redis_steward")),
            info: Family::default(),
            redis_up: Gauge::default(),
            redis_restarts: Counter::default(),
            redis_connected_clients: Gauge::default(),
            redis_maxclients: Gauge::default(),
            redis_used_memory_bytes: Gauge::default(),
            redis_maxmemory_bytes: Gauge::default(),
            redis_aof_last_write_ok: Gauge::default(),
            nofile_limit: Gauge::default(),
        };
        {
            let mut r = m.registry.lock().expect("metrics lock");
            r.register(
                "agent_info",
                "Agent version, node and data store (value is 1)",
                m.info.clone(),
            );
            r.register(
                "redis_up",
                "1 while redis answers the agent's probes",
                m.redis_up.clone(),
            );
            r.register(
                "redis_restarts",
                "Times the agent restarted a redis that died",
                m.redis_restarts.clone(),
            );
            r.register(
                "redis_connected_clients",
                "Client connections to redis",
                m.redis_connected_clients.clone(),
            );
            r.register(
                "redis_maxclients",
                "maxclients as redis reports it",
                m.redis_maxclients.clone(),
            );
            r.register(
                "redis_used_memory_bytes",
                "Memory redis uses for data",
                m.redis_used_memory_bytes.clone(),
            );
            r.register(
                "redis_maxmemory_bytes",
                "redis maxmemory",
                m.redis_maxmemory_bytes.clone(),
            );
            r.register(
                "redis_aof_last_write_ok",
                "1 when redis's last AOF write succeeded",
                m.redis_aof_last_write_ok.clone(),
            );
            r.register(
                "nofile_limit",
                "RLIMIT_NOFILE the agent obtained for redis",
                m.nofile_limit.clone(),
            );
        }
        m
    }

    /// Update the gauges that come straight from redis's INFO.
    pub fn observe_info(&self, info: &Info) {
        let set = |g: &Gauge, key: &str| {
            if let Some(v) = info.get_u64(key) {
                g.set(v as i64);
            }
        };
        set(&self.redis_connected_clients, "connected_clients");
        set(&self.redis_maxclients, "maxclients");
        set(&self.redis_used_memory_bytes, "used_memory");
        set(&self.redis_maxmemory_bytes, "maxmemory");
        self.redis_aof_last_write_ok
            .set((info.get("aof_last_write_status") == Some("ok")) as i64);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let r = self.registry.lock().expect("metrics lock");
        encode(&mut out, &r).expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_prefixed_metrics_from_info() {
        let m = Metrics::new();
        m.observe_info(&Info::parse(
            "connected_clients:7\r\nmaxclients:10000\r\naof_last_write_status:ok\r\n",
        ));
        m.redis_restarts.inc();
        let text = m.encode();
        assert!(
            text.contains("redis_steward_redis_connected_clients 7"),
            "{text}"
        );
        assert!(
            text.contains("redis_steward_redis_maxclients 10000"),
            "{text}"
        );
        assert!(
            text.contains("redis_steward_redis_restarts_total 1"),
            "{text}"
        );
        assert!(
            text.contains("redis_steward_redis_aof_last_write_ok 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
