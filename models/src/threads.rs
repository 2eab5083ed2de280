//! One single-threaded pool for inference.
//!
//! Candle's CPU kernels use rayon (and gemm asks for as many threads as there are cores):
//! for a model of a few thousand weights that only burns cores spinning. Inference runs
//! inside a pool of one thread, so a model never takes more than one core whatever the
//! machine; training keeps the global pool.

use std::sync::OnceLock;

static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();

/// Runs `f` on the single inference thread (or on the caller's thread if that pool could
/// not be created: still correct, only possibly using more cores).
pub fn single<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let pool = POOL.get_or_init(|| rayon::ThreadPoolBuilder::new().num_threads(1).thread_name(|_| "edge-models-infer".into()).build().ok());
    match pool {
        Some(pool) => pool.install(f),
        None => f(),
    }
}
