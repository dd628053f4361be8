//! The HTTP connections under the SDK: a hyper connection pool sized from the window,
//! connections dialled ahead of a transfer's data requests, and on Linux an optional TCP
//! congestion control (`TCP_CONGESTION`, e.g. `bbr`) on every socket the client opens.

mod http;
pub mod tcp;
mod warm;

pub use http::tuned_http_client;
pub use warm::Warm;
