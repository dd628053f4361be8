//! The control loop between samples and transfer parameters. For now it holds the live
//! [`window::Window`] (resizable concurrency permits) that controllers steer.

pub mod controller;
pub mod window;
