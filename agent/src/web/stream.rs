//! `GET /api/stream`: the status pushed as Server-Sent Events.
//!
//! One `status` event (the same JSON as `/api/status`) at once and then every second, and a
//! `retry: 2000` so a browser's `EventSource` reconnects two seconds after the agent went
//! away (a restart, an upgrade) without the page being reloaded.
//!
//! Before each event the stream checks that what let it in still holds ([`Held`]): when the
//! session was logged out, passed `session_max`, or its user was removed or got a new
//! password, or the API token was revoked, one `end` event is sent and the stream ends; the
//! browser's reconnect is then refused, and the page goes to the login form. An open stream
//! counts as use of its session: `session_idle` does not end it.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::Extension;
use futures::Stream;

use super::auth::Held;
use crate::live::Live;

/// How often a status event is pushed.
pub const PERIOD: Duration = Duration::from_secs(1);

pub async fn status_events(State(live): State<Live>, held: Option<Extension<Held>>) -> impl IntoResponse {
    Sse::new(events(live, held.map(|Extension(h)| h))).keep_alive(KeepAlive::default())
}

fn events(live: Live, held: Option<Held>) -> impl Stream<Item = Result<Event, Infallible>> {
    // The state: `None` once the `end` event went out.
    futures::stream::unfold(Some((live, held, true)), |state| async move {
        let (live, held, first) = state?;
        if !first {
            tokio::time::sleep(PERIOD).await;
        }
        if let Some(h) = &held {
            if !h.holds(super::auth::now()).await {
                let end = Event::default().event("end").data("the session ended: log in again");
                return Some((Ok(end), None));
            }
        }
        let event = match serde_json::to_string(&live.snapshot()) {
            Ok(json) => Event::default().event("status").retry(Duration::from_secs(2)).data(json),
            // A snapshot is plain data and always serialises; if it ever does not, say so in
            // the stream rather than ending it.
            Err(e) => Event::default().event("error").data(e.to_string()),
        };
        Some((Ok(event), Some((live, held, false))))
    })
}
