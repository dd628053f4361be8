//! The HTTP connections under the SDK: a hyper connection pool sized from the window,
//! connections dialled ahead of a transfer's data requests, and on Linux an optional TCP
//! congestion control (`TCP_CONGESTION`, e.g. `bbr`) on every socket the client opens;
//! and what those sockets have moved, as the kernel counts it.

mod http;
pub mod tcp;
mod warm;
pub mod wire;

pub use http::{Attempt, tuned_http_client};
pub use warm::Warm;
pub use wire::WireMeter;
