//! How long idle instances live and when they start ahead of calls.
//!
//! - [`predictor`]: the keep-alive and pre-warm policies (`fixed`, `hybrid`, `none`)
//!   per concurrency level, and the simulator that replays a trace under them.
//! - [`autoscaler`]: Knative-style stable and panic windows over the calls in flight.
//!
//! Pure computation over timestamps: the node runs them live, `nimbus replay` runs
//! them offline over the Azure Functions trace, with the same code.

pub mod autoscaler;
pub mod predictor;
