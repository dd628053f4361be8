//! A concurrency window whose size can change while transfers run.
//!
//! Requests take a [`WindowPermit`] before they start. [`Window::set_limit`] raises or
//! lowers the limit at any time: raising wakes waiters at once; lowering lets in-flight
//! requests finish and holds new ones back until the count is under the new limit.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// The shared window.
#[derive(Debug, Clone)]
pub struct Window {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    notify: Notify,
}

#[derive(Debug)]
struct State {
    limit: usize,
    in_use: usize,
}

impl Window {
    /// A window admitting `limit` concurrent requests (at least 1).
    pub fn new(limit: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State { limit: limit.max(1), in_use: 0 }),
                notify: Notify::new(),
            }),
        }
    }

    /// Current limit.
    pub fn limit(&self) -> usize {
        self.inner.state.lock().expect("window lock").limit
    }

    /// Permits currently held.
    pub fn in_use(&self) -> usize {
        self.inner.state.lock().expect("window lock").in_use
    }

    /// Changes the limit (at least 1).
    pub fn set_limit(&self, limit: usize) {
        self.inner.state.lock().expect("window lock").limit = limit.max(1);
        self.inner.notify.notify_waiters();
    }

    /// Waits for room in the window.
    pub async fn acquire(&self) -> WindowPermit {
        self.acquire_within(1).await
    }

    /// Waits for room in `multiple` times the window: for requests allowed past the
    /// limit (the last parts of an upload, which start together so they end together).
    pub async fn acquire_within(&self, multiple: usize) -> WindowPermit {
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.inner.state.lock().expect("window lock");
                if st.in_use < st.limit * multiple {
                    st.in_use += 1;
                    return WindowPermit { window: self.clone() };
                }
            }
            notified.await;
        }
    }
}

/// One slot of the window, released on drop.
#[derive(Debug)]
pub struct WindowPermit {
    window: Window,
}

impl Drop for WindowPermit {
    fn drop(&mut self) {
        self.window.inner.state.lock().expect("window lock").in_use -= 1;
        self.window.inner.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn limit_can_shrink_and_grow_while_permits_are_held() {
        let w = Window::new(2);
        let a = w.acquire().await;
        let b = w.acquire().await;
        w.set_limit(1);
        drop(a);
        // 1 in use, limit 1: a new request must wait.
        let w2 = w.clone();
        let waiter = tokio::spawn(async move { w2.acquire().await });
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!waiter.is_finished());
        // Growing the window admits it without any release.
        w.set_limit(3);
        let c = tokio::time::timeout(Duration::from_secs(1), waiter).await.unwrap().unwrap();
        assert_eq!(w.in_use(), 2);
        // Twice the window admits a fourth, but not a seventh.
        let d = tokio::time::timeout(Duration::from_secs(1), w.acquire_within(2)).await.unwrap();
        let (e, f) = (w.acquire_within(2).await, w.acquire_within(2).await);
        assert_eq!(w.in_use(), 5);
        assert!(tokio::time::timeout(Duration::from_millis(30), w.acquire()).await.is_err());
        let _g = w.acquire_within(2).await;
        assert!(tokio::time::timeout(Duration::from_millis(30), w.acquire_within(2)).await.is_err());
        drop((b, c, d, e, f));
        assert_eq!(w.in_use(), 1);
    }
}
