//! One CreateOrder at a time per request_id within this process.
//!
//! The database already makes concurrent duplicates safe for money (one order row, one charge per
//! idempotency key) but not for the event: two copies of a request in flight at once would both find
//! the order paid and not yet published, and both publish. A client that times out and retries while
//! its first call is still running does exactly that. Holding a lock per request_id makes the retry
//! wait for the first call and then answer from what it stored.
//!
//! Entries live only while someone holds or waits for them, so the map stays as small as the number
//! of requests in flight.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

#[derive(Debug, Default, Clone)]
pub(crate) struct RequestLocks {
    locks: Arc<Mutex<HashMap<String, Arc<AsyncMutex<()>>>>>,
}

/// Held while a request runs; dropping it lets the next request with the same id in.
#[derive(Debug)]
pub(crate) struct RequestGuard {
    guard: Option<OwnedMutexGuard<()>>,
    key: String,
    locks: RequestLocks,
}

impl RequestLocks {
    /// Waits until no other request with `key` is running, then holds it.
    pub(crate) async fn lock(&self, key: &str) -> RequestGuard {
        let lock = {
            let mut locks = self
                .locks
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            locks.entry(key.to_owned()).or_default().clone()
        };
        let guard = lock.lock_owned().await;
        RequestGuard {
            guard: Some(guard),
            key: key.to_owned(),
            locks: self.clone(),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.locks.lock().map(|l| l.len()).unwrap_or_default()
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let mut locks = self
            .locks
            .locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Release first, then remove the entry unless another request holds a clone of it (the map's
        // own reference is the only one left).
        drop(self.guard.take());
        if locks
            .get(&self.key)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            locks.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn same_key_waits_other_keys_do_not() {
        let locks = RequestLocks::default();
        let first = locks.lock("a").await;
        // Another key is free.
        let other = tokio::time::timeout(Duration::from_millis(50), locks.lock("b")).await;
        assert!(other.is_ok());
        // The same key waits until the first is released.
        let waiting = tokio::spawn({
            let locks = locks.clone();
            async move { locks.lock("a").await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .unwrap()
            .unwrap();
        drop(second);
        drop(other);
        assert_eq!(locks.len(), 0, "no entry outlives its requests");
    }
}
