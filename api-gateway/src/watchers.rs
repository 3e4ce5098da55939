//! Bounds on open invocation watches (`GET /v1/invocations/{id}/watch`): each is a
//! websocket and a periodic database read, so a tenant may hold [`PER_TENANT`] at
//! once, and a gateway [`TOTAL`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Watches one tenant may hold open at once on a gateway.
pub const PER_TENANT: usize = 100;
/// Watches a gateway holds open at once.
pub const TOTAL: usize = 5_000;

/// Open watches, per tenant.
#[derive(Default)]
pub struct Watchers(Mutex<HashMap<String, usize>>);

/// One open watch; given back when dropped.
pub struct Slot {
    all: Arc<Watchers>,
    tenant: String,
}

impl Slot {
    /// A slot for `tenant`, if it and the gateway are under their bounds.
    pub fn take(all: &Arc<Watchers>, tenant: &str) -> Option<Slot> {
        let mut m = all.0.lock().expect("lock");
        let total: usize = m.values().sum();
        let mine = m.entry(tenant.to_string()).or_default();
        if *mine >= PER_TENANT || total >= TOTAL {
            return None;
        }
        *mine += 1;
        Some(Slot {
            all: all.clone(),
            tenant: tenant.to_string(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self.all.0.lock().expect("lock");
        if let Some(n) = m.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_holds_its_share_and_gets_it_back() {
        let w = Arc::new(Watchers::default());
        let held: Vec<Slot> = (0..PER_TENANT)
            .map(|_| Slot::take(&w, "a").unwrap())
            .collect();
        assert!(Slot::take(&w, "a").is_none());
        assert!(
            Slot::take(&w, "b").is_some(),
            "another tenant is not affected"
        );
        drop(held);
        assert!(Slot::take(&w, "a").is_some());
    }
}
