//! A TCP proxy that holds every byte coming back from the server for a fixed time: a store
//! across a network, for benchmarks that show what round trips cost (this kernel has no
//! netem). Requests pass at once; each response arrives `delay` after the server sent it.
//! Stopped on drop (connections still open end when their client or server closes).

use anyhow::{Context, Result};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

pub struct LatencyProxy {
    pub port: u16,
    stop: Arc<AtomicBool>,
    accepting: Option<thread::JoinHandle<()>>,
}

impl LatencyProxy {
    /// Listen on a free loopback port and forward every connection to `upstream`.
    pub fn start(upstream: SocketAddr, delay: Duration) -> Result<LatencyProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the latency proxy")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let accepting = thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        thread::spawn(move || {
                            let _ = relay(client, upstream, delay);
                        });
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => return,
                }
            }
        });
        Ok(LatencyProxy {
            port,
            stop,
            accepting: Some(accepting),
        })
    }
}

impl Drop for LatencyProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accepting.take() {
            let _ = t.join();
        }
    }
}

/// One connection: client to server at once; server to client, each piece held until `delay`
/// after it arrived, in order.
fn relay(client: TcpStream, upstream: SocketAddr, delay: Duration) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    let server = TcpStream::connect(upstream)?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (mut from_client, mut to_server) = (client.try_clone()?, server.try_clone()?);
    thread::spawn(move || {
        let _ = std::io::copy(&mut from_client, &mut to_server);
        let _ = to_server.shutdown(Shutdown::Write);
    });
    let (pieces, held) = mpsc::channel::<(Instant, Vec<u8>)>();
    let mut to_client = client;
    thread::spawn(move || {
        for (arrived, piece) in held {
            thread::sleep((arrived + delay).saturating_duration_since(Instant::now()));
            if to_client.write_all(&piece).is_err() {
                break;
            }
        }
        let _ = to_client.shutdown(Shutdown::Write);
    });
    let mut from_server = server;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = from_server.read(&mut buf)?;
        if n == 0 || pieces.send((Instant::now(), buf[..n].to_vec())).is_err() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_come_back_late_and_whole() {
        // An echo server upstream.
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let upstream = echo.local_addr().unwrap();
        thread::spawn(move || {
            let (mut s, _) = echo.accept().unwrap();
            let mut r = s.try_clone().unwrap();
            let _ = std::io::copy(&mut r, &mut s);
        });
        let proxy = LatencyProxy::start(upstream, Duration::from_millis(100)).unwrap();
        let mut c = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let t = Instant::now();
        c.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        assert!(
            t.elapsed() >= Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
    }
}
