//! `--bwlimit` on the wire: a [`Pacer`] shared by all requests of a client hands out slots
//! of the link at the limit's rate, and [`PacedBody`] sends an upload's bytes in 64 KiB
//! chunks, each only once its slot begins, so uploads leave at the limit's rate however
//! many are in flight and wherever their bytes come from.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::network::pacing::RateLimiter;

/// Bytes sent per slot: small enough that a 10 s window sees the rate, not the chunks.
const CHUNK: usize = 64 * 1024;

/// The client's share of the link under a bandwidth limit.
#[derive(Debug)]
pub(crate) struct Pacer {
    limiter: Mutex<RateLimiter>,
    /// Bytes per second.
    rate: f64,
}

impl Pacer {
    pub(crate) fn new(rate: f64) -> Self {
        Self { limiter: Mutex::new(RateLimiter::new(now())), rate }
    }

    /// The limit, bytes per second.
    pub(crate) fn rate(&self) -> f64 {
        self.rate
    }

    /// Reserves the link for `bytes` and returns when their slot begins.
    pub(crate) fn slot(&self, bytes: u64) -> Instant {
        let now = now();
        let end = self.limiter.lock().expect("pacer lock").reserve(now, bytes as usize, self.rate / 1e6);
        end.checked_sub(Duration::from_secs_f64(bytes as f64 / self.rate)).unwrap_or(now).max(now)
    }
}

/// Tokio's clock (so that tests in paused time see the pacer's time too).
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// An upload body released chunk by chunk at the pacer's rate: whatever the inner body
/// yields (bytes in memory, a range of a file) leaves in 64 KiB chunks, each once its slot
/// begins. The inner body's size hint passes through, so the request still carries an
/// exact Content-Length.
pub(crate) struct PacedBody<B> {
    inner: B,
    /// Bytes taken from the inner body and not yet released.
    pending: Bytes,
    pacer: Arc<Pacer>,
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> PacedBody<B> {
    pub(crate) fn new(inner: B, pacer: Arc<Pacer>) -> Self {
        Self { inner, pending: Bytes::new(), pacer, wait: None }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for PacedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        while this.pending.is_empty() {
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                None => return Poll::Ready(None),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.pending = data,
                    // Trailers are not payload: they pass unpaced.
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
            }
        }
        let n = CHUNK.min(this.pending.len());
        let wait =
            this.wait.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(this.pacer.slot(n as u64).into())));
        ready!(wait.as_mut().poll(cx));
        this.wait = None;
        Poll::Ready(Some(Ok(Frame::data(this.pending.split_to(n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let pending = self.pending.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + pending);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + pending);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn two_bodies_together_leave_at_the_limit() {
        let pacer = Arc::new(Pacer::new(1_000_000.0));
        let t0 = Instant::now();
        let a = PacedBody::new(Full::new(Bytes::from(vec![1u8; 100_000])), pacer.clone());
        let b = PacedBody::new(Full::new(Bytes::from(vec![2u8; 100_000])), pacer.clone());
        assert_eq!(a.size_hint().exact(), Some(100_000));
        let (a, b) = tokio::join!(a.collect(), b.collect());
        let (a, b) = (a.unwrap().to_bytes(), b.unwrap().to_bytes());
        assert!(a.iter().all(|&x| x == 1) && a.len() == 100_000);
        assert!(b.iter().all(|&x| x == 2) && b.len() == 100_000);
        // 200 kB at 1 MB/s: the last 36 kB chunk's slot begins 164 ms in (10 ms of slack).
        let took = t0.elapsed().as_secs_f64();
        assert!((0.15..=1.0).contains(&took), "200 kB through a 1 MB/s pacer took {took:.3} s");
    }
}
