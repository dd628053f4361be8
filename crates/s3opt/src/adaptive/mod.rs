//! The control loop between samples and transfer parameters: [`controller`] turns request
//! samples into a window, [`window`] holds the live permits the engine takes, [`optimizer`]
//! sizes parts so the window fits the memory budget, [`monitor`] keeps real-time rates and
//! the timeline of decisions, [`predictor`] forecasts the rate from its trend.

pub mod controller;
pub mod monitor;
pub mod optimizer;
pub mod predictor;
pub mod window;
