//! A test seam: make one real task of the real binary panic, to test supervision end to
//! end (`tests/supervision.rs`).
//!
//! Compiled only into debug builds (`cfg(debug_assertions)`: `cargo build` and `cargo
//! test`, never `cargo build --release`, which is what a gateway runs). In a release build
//! [`inject`] is the task itself and the environment is not read.
//!
//! `EDGE_AGENT_TEST_PANIC=<task>@<ms>`: the task of that name (as in the task register,
//! e.g. `uplink`, `store-writer`) panics `<ms>` milliseconds after it started, once per
//! process (a restarted task runs normally).
//!
//! `EDGE_AGENT_TEST_HANG=<task>@<ms>`: the task of that name hangs `<ms>` milliseconds
//! after it started: it is never polled again but does not end, as a loop stuck in a
//! blocking call would (`tests/systemd_notify.rs`: the watchdog stops being fed).

use std::future::Future;

/// Runs `fut` as task `task`; in a debug build, with the panic above when it names `task`.
#[cfg(not(debug_assertions))]
pub async fn inject<F: Future>(_task: String, fut: F) -> F::Output {
    fut.await
}

#[cfg(debug_assertions)]
pub async fn inject<F: Future>(task: String, fut: F) -> F::Output {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::OnceLock;
    use std::time::Duration;

    static PLAN: OnceLock<Option<(String, Duration)>> = OnceLock::new();
    static FIRED: AtomicBool = AtomicBool::new(false);
    let plan = PLAN.get_or_init(|| {
        let spec = std::env::var("EDGE_AGENT_TEST_PANIC").ok()?;
        let (name, ms) = spec.rsplit_once('@')?;
        Some((name.to_string(), Duration::from_millis(ms.parse().ok()?)))
    });
    let Some((name, after)) = plan.as_ref().filter(|(name, _)| *name == task && !FIRED.load(Ordering::SeqCst)) else {
        return fut.await;
    };
    tokio::pin!(fut);
    tokio::select! {
        out = &mut fut => out,
        () = tokio::time::sleep(*after) => {
            FIRED.store(true, Ordering::SeqCst);
            panic!("injected by EDGE_AGENT_TEST_PANIC in task {name}");
        }
    }
}

/// Runs `fut` as task `task`; in a debug build, with the hang above when it names `task`.
#[cfg(not(debug_assertions))]
pub async fn hang<F: Future>(_task: String, fut: F) -> F::Output {
    fut.await
}

#[cfg(debug_assertions)]
pub async fn hang<F: Future>(task: String, fut: F) -> F::Output {
    use std::sync::OnceLock;
    use std::time::Duration;

    static PLAN: OnceLock<Option<(String, Duration)>> = OnceLock::new();
    let plan = PLAN.get_or_init(|| {
        let spec = std::env::var("EDGE_AGENT_TEST_HANG").ok()?;
        let (name, ms) = spec.rsplit_once('@')?;
        Some((name.to_string(), Duration::from_millis(ms.parse().ok()?)))
    });
    let Some((_, after)) = plan.as_ref().filter(|(name, _)| *name == task) else {
        return fut.await;
    };
    tokio::pin!(fut);
    tokio::select! {
        out = &mut fut => out,
        () = tokio::time::sleep(*after) => std::future::pending().await,
    }
}
