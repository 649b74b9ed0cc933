//! Store operation latency, recorded the same way by every backend.

use std::future::Future;
use std::time::Instant;

/// Runs a store operation and records its latency in the
/// `roost_store_operation_duration_seconds{op, outcome}` histogram.
pub async fn timed<T, E, F>(op: &'static str, fut: F) -> Result<T, E>
where
    F: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    let result = fut.await;
    let outcome = if result.is_ok() { "ok" } else { "error" };
    metrics::histogram!("roost_store_operation_duration_seconds", "op" => op, "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
    result
}
