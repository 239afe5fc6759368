//! Health checks for load balancers and orchestrators, with Patroni's semantics: the answer
//! is the HTTP status (200 or 503), the body says why in one line. Pure: the API gathers the
//! [`Facts`] from the parts' snapshots and asks [`judge`].
//!
//! | path         | 200 when                                                               |
//! |--------------|------------------------------------------------------------------------|
//! | `/primary`   | this node's redis answers and is the writable primary of its epoch     |
//! | `/replica`   | this node's redis answers, replicates from the primary with the link up, and (with `?lag=`) is at most that far behind |
//! | `/health`    | this node's redis answers (any role)                                    |
//! | `/liveness`  | the agent's own loops run (an orchestrator restarts it otherwise)       |
//! | `/readiness` | it can serve: the writable primary, or a linked replica                 |
//!
//! A load balancer sends writes to the node whose `/primary` answers 200 (HAProxy:
//! `option httpchk GET /primary`); during a failover no node does for a moment, never two.

use std::fmt;

/// One of the checks above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Primary,
    Replica { max_lag: Option<Lag> },
    Health,
    Liveness,
    Readiness,
}

/// How far behind a replica may be: bytes of replication stream, or seconds since its redis
/// last heard from the primary (`master_last_io_seconds_ago`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lag {
    Bytes(u64),
    Seconds(u64),
}

impl fmt::Display for Lag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lag::Bytes(b) => write!(f, "{b} bytes"),
            Lag::Seconds(s) => write!(f, "{s} s"),
        }
    }
}

/// `?lag=` as Patroni takes it: a byte count, optionally with a unit (`B`, `kB`, `MB`, `GB`,
/// powers of 1024 as PostgreSQL's units are), or seconds with `s` (`10s`).
pub fn parse_lag(text: &str) -> Result<Lag, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("lag {text:?}: expected a number, e.g. 1048576, 16MB or 10s"))?;
    let scale = |k: u64| {
        n.checked_mul(k)
            .map(Lag::Bytes)
            .ok_or_else(|| format!("lag {text:?} is too large"))
    };
    match unit.trim() {
        "" | "B" => Ok(Lag::Bytes(n)),
        "kB" | "KB" | "k" => scale(1 << 10),
        "MB" | "M" => scale(1 << 20),
        "GB" | "G" => scale(1 << 30),
        "s" => Ok(Lag::Seconds(n)),
        other => Err(format!(
            "lag {text:?}: unknown unit {other:?} (B, kB, MB, GB or s)"
        )),
    }
}

/// What the checks look at, from one moment's snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// Redis answered its last probe.
    pub redis_healthy: bool,
    /// The agent's supervisor loop ran recently (what the systemd watchdog also watches).
    pub agent_alive: bool,
    /// A one-node data store: no election, its redis is the primary.
    pub single: bool,
    /// The election's role for this node (`primary`, `replica`, `fenced`, `starting`, …).
    pub role: String,
    /// Primary and taking writes (not fenced).
    pub writable: bool,
    pub epoch: u64,
    /// Redis replicates with `master_link_status:up`.
    pub linked: bool,
    /// Bytes behind the primary, as gossip reports both offsets.
    pub lag_bytes: Option<u64>,
    /// Seconds since its redis last heard from the primary.
    pub lag_seconds: Option<u64>,
}

/// The status code and a one-line reason.
pub fn judge(check: Check, f: &Facts) -> (u16, String) {
    let ok = |why: String| (200, why);
    let no = |why: String| (503, why);
    if check == Check::Liveness {
        return if f.agent_alive {
            ok("agent running".into())
        } else {
            no("the agent's supervisor loop has not run for a while".into())
        };
    }
    if !f.redis_healthy {
        return no("redis is not answering".into());
    }
    let primary = f.single || (f.role == "primary" && f.writable);
    let replica = !f.single && f.role == "replica" && f.linked;
    match check {
        Check::Health => ok(format!("redis answering ({})", role(f))),
        Check::Primary if primary => ok(format!("writable primary of epoch {}", f.epoch)),
        Check::Primary => no(format!("not the writable primary ({})", role(f))),
        Check::Replica { .. } if !replica => no(format!(
            "not a replica streaming from the primary ({})",
            role(f)
        )),
        Check::Replica { max_lag: None } => ok("replica, link up".into()),
        Check::Replica {
            max_lag: Some(limit),
        } => {
            let behind = match limit {
                Lag::Bytes(_) => f.lag_bytes.map(Lag::Bytes),
                Lag::Seconds(_) => f.lag_seconds.map(Lag::Seconds),
            };
            match behind {
                None => no("replica, but its lag is not known yet".into()),
                Some(b) if lag_value(b) <= lag_value(limit) => {
                    ok(format!("replica, {b} behind (at most {limit})"))
                }
                Some(b) => no(format!("replica {b} behind, more than {limit}")),
            }
        }
        Check::Readiness if primary => ok(format!("writable primary of epoch {}", f.epoch)),
        Check::Readiness if replica => ok("replica, link up".into()),
        Check::Readiness => no(format!("cannot serve yet ({})", role(f))),
        Check::Liveness => unreachable!("answered above"),
    }
}

fn lag_value(l: Lag) -> u64 {
    match l {
        Lag::Bytes(n) | Lag::Seconds(n) => n,
    }
}

fn role(f: &Facts) -> String {
    match (f.role.as_str(), f.writable, f.linked) {
        ("primary", false, _) => "primary, fenced".into(),
        ("replica", _, false) => "replica, link down".into(),
        (r, _, _) => r.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(role: &str, writable: bool, linked: bool) -> Facts {
        Facts {
            redis_healthy: true,
            agent_alive: true,
            role: role.into(),
            writable,
            epoch: 3,
            linked,
            lag_bytes: Some(1000),
            lag_seconds: Some(1),
            ..Facts::default()
        }
    }

    #[test]
    fn exactly_the_writable_primary_answers_primary() {
        let cases = [
            (facts("primary", true, false), 200, 503, 200),
            (facts("primary", false, false), 503, 503, 503),
            (facts("replica", false, true), 503, 200, 200),
            (facts("replica", false, false), 503, 503, 503),
            (facts("starting", false, false), 503, 503, 503),
        ];
        for (f, primary, replica, ready) in cases {
            assert_eq!(judge(Check::Primary, &f).0, primary, "{f:?}");
            assert_eq!(
                judge(Check::Replica { max_lag: None }, &f).0,
                replica,
                "{f:?}"
            );
            assert_eq!(judge(Check::Readiness, &f).0, ready, "{f:?}");
            assert_eq!(judge(Check::Health, &f).0, 200, "{f:?}");
        }
        let single = Facts {
            single: true,
            ..facts("primary", true, false)
        };
        assert_eq!(judge(Check::Primary, &single).0, 200);
        assert_eq!(judge(Check::Replica { max_lag: None }, &single).0, 503);
    }

    #[test]
    fn a_down_redis_fails_everything_but_liveness() {
        let f = Facts {
            redis_healthy: false,
            ..facts("primary", true, false)
        };
        for c in [
            Check::Primary,
            Check::Replica { max_lag: None },
            Check::Health,
            Check::Readiness,
        ] {
            let (code, why) = judge(c, &f);
            assert_eq!((code, why.as_str()), (503, "redis is not answering"));
        }
        assert_eq!(judge(Check::Liveness, &f).0, 200);
        let stuck = Facts {
            agent_alive: false,
            ..f
        };
        assert_eq!(judge(Check::Liveness, &stuck).0, 503);
    }

    #[test]
    fn replica_lag_limits_in_bytes_and_seconds() {
        let f = facts("replica", false, true);
        let at = |lag: &str| {
            judge(
                Check::Replica {
                    max_lag: Some(parse_lag(lag).unwrap()),
                },
                &f,
            )
        };
        assert_eq!(at("1000").0, 200);
        assert_eq!(at("999").0, 503);
        assert!(
            at("999")
                .1
                .contains("1000 bytes behind, more than 999 bytes"),
            "{:?}",
            at("999")
        );
        assert_eq!(at("1kB").0, 200);
        assert_eq!(at("1s").0, 200);
        assert_eq!(at("0s").0, 503);
        let unknown = Facts {
            lag_bytes: None,
            ..f
        };
        let (code, why) = judge(
            Check::Replica {
                max_lag: Some(Lag::Bytes(10)),
            },
            &unknown,
        );
        assert_eq!(code, 503, "{why}");
    }

    #[test]
    fn lag_parsing_names_what_is_wrong() {
        assert_eq!(parse_lag("16MB"), Ok(Lag::Bytes(16 << 20)));
        assert_eq!(parse_lag("64kB"), Ok(Lag::Bytes(64 << 10)));
        assert_eq!(parse_lag("10s"), Ok(Lag::Seconds(10)));
        assert_eq!(parse_lag("42"), Ok(Lag::Bytes(42)));
        assert!(parse_lag("fast").unwrap_err().contains("expected a number"));
        assert!(parse_lag("3 parsecs").unwrap_err().contains("unknown unit"));
        assert!(parse_lag("99999999999999999999GB").is_err());
    }
}
