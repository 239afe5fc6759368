//! What every log record says about the node: its slot name, and in an HA data store the role
//! and epoch it publishes. The CLI sets the node before `run` starts, the HA shell the role
//! and epoch the moment it publishes them; `ops::logging` attaches the current values to
//! every journal record. A shared basic, so the part that learns a value need not import
//! the logging that writes it.

use std::sync::{Arc, OnceLock, RwLock};

/// What every record carries about the node: its slot name, and in an HA data store the role
/// and epoch it publishes. Shared between the threads that log and the code that learns them.
#[derive(Debug, Default)]
pub struct LogContext {
    inner: RwLock<ContextFields>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ContextFields {
    pub node: Option<String>,
    pub role: Option<String>,
    pub epoch: Option<u64>,
}

impl LogContext {
    pub fn set_node(&self, name: &str) {
        self.write(|c| c.node = Some(name.to_string()));
    }

    pub fn set_role(&self, role: &str, epoch: u64) {
        self.write(|c| {
            c.role = Some(role.to_string());
            c.epoch = Some(epoch);
        });
    }

    fn write(&self, f: impl FnOnce(&mut ContextFields)) {
        let mut guard = self.inner.write().unwrap_or_else(|e| e.into_inner());
        f(&mut guard);
    }

    /// The values as they are now, for one record.
    pub fn snapshot(&self) -> ContextFields {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

static CONTEXT: OnceLock<Arc<LogContext>> = OnceLock::new();

/// The process's context, the one [`set_node`] and [`set_role`] change.
pub fn global() -> &'static Arc<LogContext> {
    CONTEXT.get_or_init(Default::default)
}

/// This node's slot name, attached to every journal record from now on.
pub fn set_node(name: &str) {
    global().set_node(name);
}

/// The role and epoch this node publishes (HA data stores), attached to every journal record
/// from now on.
pub fn set_role(role: &str, epoch: u64) {
    global().set_role(role, epoch);
}
