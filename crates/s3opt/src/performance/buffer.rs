//! A bounded buffer pool: the memory budget of all transfers of a client.
//!
//! Every part or range held in memory is a [`PooledBuf`] whose bytes count against the
//! budget until the last copy of its data is dropped. When the budget is spent,
//! [`BufferPool::acquire`] waits (back-pressure on the reader) instead of allocating.
//! Waiters are served in order (tokio's semaphore is fair), so a download that consumes
//! ranges in order never starves its earliest range.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Budget accounting granularity.
const UNIT: u64 = 4096;

fn units(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX)
}

/// The shared pool.
#[derive(Clone, Debug)]
pub struct BufferPool {
    budget: u64,
    sem: Arc<Semaphore>,
}

impl BufferPool {
    /// A pool that never holds more than `budget` bytes.
    pub fn new(budget: u64) -> Self {
        let budget = budget.max(UNIT);
        Self { budget, sem: Arc::new(Semaphore::new(units(budget) as usize)) }
    }

    /// The budget in bytes.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Bytes currently held by live buffers.
    pub fn in_use(&self) -> u64 {
        let free_units = self.sem.available_permits() as u64;
        self.budget.div_ceil(UNIT).saturating_sub(free_units) * UNIT
    }

    /// Borrows an empty buffer with room for `size` bytes, waiting while the budget is spent.
    /// Sizes above the budget are clamped to it (callers never ask for that much).
    pub async fn acquire(&self, size: u64) -> PooledBuf {
        let size = size.min(self.budget);
        let permit = self.sem.clone().acquire_many_owned(units(size)).await.expect("semaphore never closed");
        PooledBuf { buf: BytesMut::with_capacity(size as usize), permit }
    }
}

/// A buffer borrowed from the pool. Fill it, [`freeze`](PooledBuf::freeze) it to send it;
/// its budget returns to the pool when it (or the frozen copy) is dropped.
pub struct PooledBuf {
    buf: BytesMut,
    permit: OwnedSemaphorePermit,
}

impl PooledBuf {
    /// The writable buffer.
    pub fn buf_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// The data written so far.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Turns the filled buffer into a cheaply clonable [`FrozenBuf`] (for retries).
    pub fn freeze(self) -> FrozenBuf {
        FrozenBuf { bytes: self.buf.freeze(), _permit: self.permit }
    }
}

/// Immutable filled buffer, still counted against the budget until dropped.
pub struct FrozenBuf {
    bytes: Bytes,
    _permit: OwnedSemaphorePermit,
}

impl FrozenBuf {
    /// The data (a cheap reference-counted handle).
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn acquire_waits_when_the_budget_is_spent_and_resumes_on_release() {
        let pool = BufferPool::new(1 << 20);
        let a = pool.acquire(600 << 10).await;
        assert!(pool.in_use() >= 600 << 10);
        let pool2 = pool.clone();
        let waiter = tokio::spawn(async move { pool2.acquire(600 << 10).await.buf_mut().capacity() });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "second buffer must wait: budget is 1 MiB");
        drop(a.freeze());
        let cap = tokio::time::timeout(Duration::from_secs(2), waiter).await.unwrap().unwrap();
        assert!(cap >= 600 << 10);
        assert_eq!(pool.in_use(), 0);
    }
}
