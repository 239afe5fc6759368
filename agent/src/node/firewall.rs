//! Enforces the allowed CIDR blocks at the node with an nftables table the agent owns.
//!
//! The ruleset is rendered by a pure function and applied atomically with `nft -f -`
//! (declare, delete, re-create in one transaction), so a change never leaves a gap. The table
//! is deleted when the agent exits cleanly; after a crash it stays (fail closed) until the
//! next start replaces it.

use anyhow::{bail, Context, Result};
use ipnet::IpNet;
use std::io::Write;
use std::process::{Command, Stdio};
use tracing::info;

/// The nftables table name for one agent: unique per data store and node, so several agents
/// on one machine (the loopback demo) never touch each other's rules.
pub fn table_name(data_store_id: &str, node_name: &str) -> String {
    format!("redis_steward_{data_store_id}_{node_name}").replace('-', "_")
}

/// The whole table: traffic to `ports` is accepted from loopback and from `allowed` (plus
/// `always_allowed`, e.g. peer nodes), and reset otherwise. Other traffic is not touched.
pub fn render_ruleset(
    table: &str,
    ports: &[u16],
    allowed: &[IpNet],
    always_allowed: &[IpNet],
) -> String {
    let ports = ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for net in allowed.iter().chain(always_allowed) {
        match net {
            IpNet::V4(_) => v4.push(net.to_string()),
            IpNet::V6(_) => v6.push(net.to_string()),
        }
    }
    let set = |name: &str, ty: &str, elems: &[String]| {
        let elements = if elems.is_empty() {
            String::new()
        } else {
            format!(" elements = {{ {} }};", elems.join(", "))
        };
        format!("  set {name} {{ type {ty}; flags interval; auto-merge;{elements} }}\n")
    };
    format!(
        "table inet {table}\n\
         delete table inet {table}\n\
         table inet {table} {{\n\
         {}{}\
         \x20 chain input {{\n\
         \x20   type filter hook input priority filter - 5; policy accept;\n\
         \x20   tcp dport {{ {ports} }} iif \"lo\" accept\n\
         \x20   tcp dport {{ {ports} }} ip saddr @allowed4 accept\n\
         \x20   tcp dport {{ {ports} }} ip6 saddr @allowed6 accept\n\
         \x20   tcp dport {{ {ports} }} counter reject with tcp reset\n\
         \x20 }}\n\
         }}\n",
        set("allowed4", "ipv4_addr", &v4),
        set("allowed6", "ipv6_addr", &v6),
    )
}

fn nft(input: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context(
            "cannot run `nft` (install the nftables package, or leave access.allowed_cidrs open)",
        )?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The agent's nftables table. `apply` installs or replaces it; `remove` deletes it.
pub struct Firewall {
    table: String,
}

impl Firewall {
    pub fn new(data_store_id: &str, node_name: &str) -> Self {
        Firewall {
            table: table_name(data_store_id, node_name),
        }
    }

    pub fn apply(&self, ports: &[u16], allowed: &[IpNet], always_allowed: &[IpNet]) -> Result<()> {
        nft(&render_ruleset(&self.table, ports, allowed, always_allowed))
            .with_context(|| format!("cannot install nftables table {}", self.table))?;
        info!(table = %self.table, allowed = ?allowed, "access limited to allowed CIDRs");
        Ok(())
    }

    /// Remove the table if present (declaring it first makes the delete never fail on absence).
    pub fn remove(&self) -> Result<()> {
        let t = &self.table;
        nft(&format!("table inet {t}\ndelete table inet {t}\n"))
            .with_context(|| format!("cannot remove nftables table {t}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_nft_identifiers() {
        assert_eq!(table_name("ds-1", "node-a"), "redis_steward_ds_1_node_a");
    }

    #[test]
    fn ruleset_lists_each_family_and_resets_the_rest() {
        let nets: Vec<IpNet> = vec![
            "10.0.0.0/8".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ];
        let peers: Vec<IpNet> = vec!["192.0.2.5/32".parse().unwrap()];
        let r = render_ruleset("t", &[6380, 26380], &nets, &peers);
        assert!(r.starts_with("table inet t\ndelete table inet t\n"), "{r}");
        assert!(r.contains("type ipv4_addr; flags interval; auto-merge; elements = { 10.0.0.0/8, 192.0.2.5/32 };"), "{r}");
        assert!(
            r.contains("type ipv6_addr; flags interval; auto-merge; elements = { 2001:db8::/32 };"),
            "{r}"
        );
        assert!(
            r.contains("tcp dport { 6380, 26380 } counter reject with tcp reset"),
            "{r}"
        );
        let empty6 = render_ruleset("t", &[6380], &nets[..1], &[]);
        assert!(
            empty6.contains("set allowed6 { type ipv6_addr; flags interval; auto-merge; }"),
            "{empty6}"
        );
    }
}
