//! A bounded buffer pool: the memory budget of all transfers of a client.
//!
//! Every part or range held in memory is a [`PooledBuf`] whose bytes count against the
//! budget until the last copy of its data is dropped. When the budget is spent,
//! [`BufferPool::acquire`] waits (back-pressure on the reader) instead of allocating.
//! Waiters are served in order (tokio's semaphore is fair), so a download that consumes
//! ranges in order never starves its earliest range.
//!
//! Released buffers are kept and handed out again for the same size, so the process
//! allocates each buffer once instead of once per part (no allocator churn, no page faults
//! on fresh memory: on loopback they cost more than the copy itself). Buffers of several
//! sizes may be kept, but never more bytes than the budget has free: live plus cached
//! bytes stay within the budget.

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Budget accounting granularity.
const UNIT: u64 = 4096;

pub(crate) fn units(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX)
}

type Cache = Arc<Mutex<Vec<BytesMut>>>;

/// The shared pool.
#[derive(Clone, Debug)]
pub struct BufferPool {
    budget: u64,
    sem: Arc<Semaphore>,
    cache: Cache,
}

impl BufferPool {
    /// A pool that never holds more than `budget` bytes.
    pub fn new(budget: u64) -> Self {
        let budget = budget.max(UNIT);
        Self { budget, sem: Arc::new(Semaphore::new(units(budget) as usize)), cache: Cache::default() }
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
        let size = size.min(self.budget) as usize;
        let permit = self.reserve(size as u64).await;
        let buf = {
            let mut cache = self.cache.lock().expect("pool cache");
            let buf = match cache.iter().position(|b| b.capacity() == size) {
                Some(i) => cache.swap_remove(i),
                None => BytesMut::with_capacity(size),
            };
            // Keep no more cached bytes than the budget has free (oldest go first).
            let free = self.sem.available_permits() as u64 * UNIT;
            let mut cached: u64 = cache.iter().map(|b| b.capacity() as u64).sum();
            while cached > free {
                cached -= cache.remove(0).capacity() as u64;
            }
            buf
        };
        PooledBuf { buf: Some(buf), permit: Some(permit), cache: self.cache.clone() }
    }

    /// Reserves `size` bytes of the budget (clamped to it) without a buffer, for data held
    /// in buffers of someone else's (a response's chunks on their way to a file), waiting
    /// while the budget is spent. The bytes return to the pool when the permit is dropped.
    pub async fn reserve(&self, size: u64) -> OwnedSemaphorePermit {
        let size = size.min(self.budget);
        self.sem.clone().acquire_many_owned(units(size)).await.expect("semaphore never closed")
    }
}

fn give_back(cache: &Cache, mut buf: BytesMut) {
    buf.clear();
    if buf.capacity() > 0 {
        cache.lock().expect("pool cache").push(buf);
    }
}

/// A buffer borrowed from the pool. Fill it, [`freeze`](PooledBuf::freeze) it to send it;
/// its budget returns to the pool when it (or the frozen copy) is dropped.
pub struct PooledBuf {
    buf: Option<BytesMut>,
    permit: Option<OwnedSemaphorePermit>,
    cache: Cache,
}

impl PooledBuf {
    /// The writable buffer.
    pub fn buf_mut(&mut self) -> &mut BytesMut {
        self.buf.as_mut().expect("present until frozen")
    }

    /// Takes the buffer out (to lend it to a request); put it back with [`PooledBuf::put`].
    pub fn take(&mut self) -> BytesMut {
        self.buf.take().unwrap_or_default()
    }

    /// Puts a (possibly refilled) buffer back.
    pub fn put(&mut self, buf: BytesMut) {
        self.buf = Some(buf);
    }

    /// The data written so far.
    pub fn as_slice(&self) -> &[u8] {
        self.buf.as_deref().unwrap_or_default()
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Gives back the budget a buffer reserved but did not fill (an upload of unknown
    /// length whose data ended well short of the part size): the data moves to an
    /// allocation of its own size and the spare budget returns to the pool at once, so a
    /// few hundred small objects in flight do not each hold a whole part's reservation.
    /// The large allocation is freed rather than cached, so live plus cached bytes stay
    /// within the budget.
    pub fn shrink_to_fit(mut self) -> Self {
        let Some(buf) = self.buf.take() else { return self };
        let (need, held) = (units(buf.len() as u64).max(1), self.permit.as_ref().map_or(0, |p| p.num_permits() as u32));
        if 2 * need > held {
            self.buf = Some(buf);
            return self;
        }
        self.buf = Some(BytesMut::from(&buf[..]));
        drop(buf);
        if let Some(permit) = &mut self.permit {
            drop(permit.split((held - need) as usize));
        }
        self
    }

    /// Turns the filled buffer into a cheaply clonable [`FrozenBuf`] (for retries).
    pub fn freeze(mut self) -> FrozenBuf {
        let bytes = self.buf.take().unwrap_or_default().freeze();
        FrozenBuf { bytes, permit: self.permit.take(), cache: self.cache.clone() }
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            give_back(&self.cache, buf);
        }
        // The permit is released after the buffer is back, so a woken waiter can reuse it.
        self.permit.take();
    }
}

/// Immutable filled buffer, still counted against the budget until dropped.
pub struct FrozenBuf {
    bytes: Bytes,
    permit: Option<OwnedSemaphorePermit>,
    cache: Cache,
}

impl FrozenBuf {
    /// The data (a cheap reference-counted handle).
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }
}

impl Drop for FrozenBuf {
    fn drop(&mut self) {
        // Reusable only if no request still holds a copy (they have all finished by now).
        if let Ok(buf) = std::mem::take(&mut self.bytes).try_into_mut() {
            give_back(&self.cache, buf);
        }
        self.permit.take();
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

    #[tokio::test]
    async fn buffers_are_reused_and_the_cache_never_holds_more_than_is_free() {
        let pool = BufferPool::new(4 << 20);
        let mut a = pool.acquire(1 << 20).await;
        a.buf_mut().extend_from_slice(&[1u8; 1000]);
        let ptr = a.as_slice().as_ptr();
        drop(a.freeze());
        let b = pool.acquire(1 << 20).await;
        assert_eq!(b.as_slice().as_ptr(), ptr, "the same allocation came back");
        assert!(b.is_empty());
        drop(b);
        let cached = || pool.cache.lock().unwrap().iter().map(|b| b.capacity()).sum::<usize>();
        let c = pool.acquire(2 << 20).await;
        assert_eq!(cached(), 1 << 20, "a buffer of another size stays while the budget has room for it");
        drop(c);
        assert_eq!(cached(), 3 << 20);
        let d = pool.acquire(3 << 20).await;
        assert!(cached() <= 1 << 20, "3 of 4 MiB live: at most 1 MiB may stay cached, not {}", cached());
        drop(d);
    }

    #[tokio::test]
    async fn a_short_buffer_gives_back_what_it_did_not_fill() {
        let pool = BufferPool::new(8 << 20);
        let mut a = pool.acquire(8 << 20).await;
        a.buf_mut().extend_from_slice(&[7u8; 100_000]);
        let a = a.shrink_to_fit();
        assert_eq!(a.as_slice(), &[7u8; 100_000][..]);
        assert_eq!(pool.in_use(), 100_000u64.div_ceil(UNIT) * UNIT, "only the filled bytes stay reserved");
        // The rest of the budget is free again: a 7 MiB buffer does not wait.
        let b = tokio::time::timeout(Duration::from_secs(1), pool.acquire(7 << 20)).await.expect("budget was returned");
        drop((a.freeze(), b));
        assert_eq!(pool.in_use(), 0);
        let mut full = pool.acquire(1 << 20).await;
        full.buf_mut().extend_from_slice(&[1u8; 900_000]);
        let ptr = full.as_slice().as_ptr();
        assert_eq!(full.shrink_to_fit().as_slice().as_ptr(), ptr, "a mostly full buffer is kept as is");
    }
}
