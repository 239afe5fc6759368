//! A real Azure Blob Storage emulator for tests: Azurite's blob service (npm `azurite`,
//! whose conditional writes are atomic), started on a free loopback port with its data in a
//! temporary directory, and stopped on drop. The agent reaches it through an ordinary
//! `az://container/prefix` URL with an endpoint option (see [`AzuriteServer::options`]).

use anyhow::{bail, Context, Result};
use base64::Engine;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// Azurite's well-known development account and key (public, documented by Microsoft).
pub const ACCOUNT: &str = "devstoreaccount1";
pub const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const API_VERSION: &str = "2021-08-06";

pub struct AzuriteServer {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl AzuriteServer {
    /// Start `azurite-blob` and wait (bounded) until it answers.
    pub fn start() -> Result<AzuriteServer> {
        let port = crate::node::free_port();
        let dir = tempfile::Builder::new().prefix("azurite-").tempdir()?;
        let child = Command::new("azurite-blob")
            .args(["--silent", "--disableTelemetry", "--skipApiVersionCheck"])
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .arg("--location")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start azurite-blob (npm install -g azurite)")?;
        let mut server = AzuriteServer {
            port,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = server.child.try_wait()? {
                bail!("azurite-blob exited: {status}");
            }
            if Instant::now() > deadline {
                bail!("azurite-blob did not answer on port {port} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(server)
    }

    /// The blob service URL of the development account (path-style, as Azurite serves it).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    /// Create a container, signing the request with the account key (Shared Key).
    pub fn create_container(&self, name: &str) -> Result<()> {
        let date = httpdate::fmt_http_date(SystemTime::now());
        // Shared Key string to sign: the verb, eleven standard headers (all empty here; a
        // zero Content-Length is signed as empty), the x-ms-* headers, the resource.
        let to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{API_VERSION}\n\
             /{ACCOUNT}/{ACCOUNT}/{name}\nrestype:container"
        );
        let b64 = base64::engine::general_purpose::STANDARD;
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &b64.decode(ACCOUNT_KEY)?);
        let signature = b64.encode(ring::hmac::sign(&key, to_sign.as_bytes()));
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "PUT /{ACCOUNT}/{name}?restype=container HTTP/1.1\r\nHost: 127.0.0.1\r\n\
             x-ms-date: {date}\r\nx-ms-version: {API_VERSION}\r\n\
             Authorization: SharedKey {ACCOUNT}:{signature}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n"
        )?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        let status = reply.lines().next().unwrap_or_default();
        if !status.contains(" 201") {
            bail!("creating container {name}: {status}");
        }
        Ok(())
    }

    /// object_store options that point an `az://container/prefix` URL at this server.
    pub fn options(&self) -> BTreeMap<String, String> {
        [
            ("azure_storage_account_name", ACCOUNT.to_string()),
            ("azure_storage_account_key", ACCOUNT_KEY.to_string()),
            ("azure_storage_endpoint", self.endpoint()),
            ("azure_allow_http", "true".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl Drop for AzuriteServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
