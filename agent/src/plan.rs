//! The product plans and what each one promises. Pure data: no I/O.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A customer's plan. It fixes how many Redis nodes a data store has and how much
/// backup history is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Plan {
    Hobbyist,
    Startup,
    Business,
    Premium,
}

impl Plan {
    pub const ALL: [Plan; 4] = [Plan::Hobbyist, Plan::Startup, Plan::Business, Plan::Premium];

    /// Number of Redis nodes (voters) in a data store of this plan.
    pub fn redis_nodes(self) -> usize {
        match self {
            Plan::Hobbyist | Plan::Startup => 1,
            Plan::Business => 2,
            Plan::Premium => 3,
        }
    }

    /// Whether the plan fails over automatically (more than one node).
    pub fn is_highly_available(self) -> bool {
        self.redis_nodes() > 1
    }

    /// Days of restorable backup history. `None` means "only the newest restorable chain".
    pub fn backup_history_days(self) -> Option<u32> {
        match self {
            Plan::Hobbyist => None,
            Plan::Startup => Some(1),
            Plan::Business => Some(3),
            Plan::Premium => Some(13),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Plan::Hobbyist => "hobbyist",
            Plan::Startup => "startup",
            Plan::Business => "business",
            Plan::Premium => "premium",
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Plan {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Plan::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                format!("unknown plan {s:?}; expected one of hobbyist, startup, business, premium")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_match_the_product_sheet() {
        let table: Vec<_> = Plan::ALL
            .iter()
            .map(|p| (p.as_str(), p.redis_nodes(), p.backup_history_days()))
            .collect();
        assert_eq!(
            table,
            vec![
                ("hobbyist", 1, None),
                ("startup", 1, Some(1)),
                ("business", 2, Some(3)),
                ("premium", 3, Some(13)),
            ]
        );
        assert!(!Plan::Startup.is_highly_available());
        assert!(Plan::Business.is_highly_available());
    }

    #[test]
    fn parsing_round_trips_and_rejects_unknown() {
        for p in Plan::ALL {
            assert_eq!(p.as_str().parse::<Plan>().unwrap(), p);
        }
        let err = "enterprise".parse::<Plan>().unwrap_err();
        assert!(
            err.contains("enterprise") && err.contains("premium"),
            "{err}"
        );
    }
}
