//! The HTTP connections under the SDK, when they need more than its defaults: a hyper
//! connection pool sized from the window, and on Linux a chosen TCP congestion control
//! (`TCP_CONGESTION`, e.g. `bbr`) on every socket the client opens.

mod http;
pub mod tcp;

pub use http::tuned_http_client;
