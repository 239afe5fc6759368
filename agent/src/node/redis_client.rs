//! The agent's admin line to its own redis (unix socket, admin user), and INFO parsing.

use anyhow::{Context, Result};
use redis::aio::MultiplexedConnection;
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Connect to redis over its unix socket as the admin user.
pub async fn connect_admin(
    socket: &Path,
    user: &str,
    password: &str,
) -> Result<MultiplexedConnection> {
    let info: ConnectionInfo = ConnectionAddr::Unix(socket.to_path_buf())
        .into_connection_info()?
        .set_redis_settings(
            RedisConnectionInfo::default()
                .set_username(user)
                .set_password(password),
        );
    let client = redis::Client::open(info)?;
    let cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(ADMIN_TIMEOUT))
        .set_response_timeout(Some(ADMIN_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
        .with_context(|| format!("cannot connect to redis at {}", socket.display()))
}

/// A lazily (re)connected admin connection: connects on first use and after any failure.
pub struct AdminLink {
    socket: PathBuf,
    user: String,
    password: String,
    conn: Option<MultiplexedConnection>,
}

impl AdminLink {
    pub fn new(socket: &Path, user: &str, password: &str) -> AdminLink {
        AdminLink {
            socket: socket.to_path_buf(),
            user: user.to_string(),
            password: password.to_string(),
            conn: None,
        }
    }

    /// Forget the connection (redis restarted, or a command failed).
    pub fn reset(&mut self) {
        self.conn = None;
    }

    pub async fn connection(&mut self) -> Result<&mut MultiplexedConnection> {
        if self.conn.is_none() {
            self.conn = Some(connect_admin(&self.socket, &self.user, &self.password).await?);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// Run one command; a failure drops the connection so the next call reconnects.
    pub async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> Result<T> {
        let r: redis::RedisResult<T> = cmd.query_async(self.connection().await?).await;
        r.map_err(|e| {
            self.reset();
            anyhow::Error::from(e).context("admin command failed")
        })
    }
}

/// Parsed `INFO` output: `section -> key -> value`, keys as Redis prints them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Info(pub HashMap<String, String>);

impl Info {
    pub fn parse(text: &str) -> Info {
        let map = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.trim_end().split_once(':'))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Info(map)
    }
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.parse().ok()
    }
}

/// `INFO everything` through the admin connection.
pub async fn info(conn: &mut MultiplexedConnection) -> Result<Info> {
    let text: String = redis::cmd("INFO")
        .arg("everything")
        .query_async(conn)
        .await?;
    Ok(Info::parse(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_info_sections() {
        let text = "# Server\r\nredis_version:7.0.15\r\nprocess_id:42\r\n\r\n# Clients\r\nconnected_clients:3\r\nmaxclients:10000\r\n";
        let info = Info::parse(text);
        assert_eq!(info.get("redis_version"), Some("7.0.15"));
        assert_eq!(info.get_u64("process_id"), Some(42));
        assert_eq!(info.get_u64("maxclients"), Some(10000));
        assert_eq!(info.get("missing"), None);
        assert_eq!(info.0.len(), 4);
    }
}
