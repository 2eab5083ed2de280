//! `GET /api/stream`: the status pushed as Server-Sent Events.
//!
//! One `status` event (the same JSON as `/api/status`) at once and then every second, and a
//! `retry: 2000` so a browser's `EventSource` reconnects two seconds after the agent went
//! away (a restart, an upgrade) without the page being reloaded.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use futures::Stream;

use crate::live::Live;

/// How often a status event is pushed.
pub const PERIOD: Duration = Duration::from_secs(1);

pub async fn status_events(State(live): State<Live>) -> impl IntoResponse {
    Sse::new(events(live)).keep_alive(KeepAlive::default())
}

fn events(live: Live) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold((live, true), |(live, first)| async move {
        if !first {
            tokio::time::sleep(PERIOD).await;
        }
        let event = match serde_json::to_string(&live.snapshot()) {
            Ok(json) => Event::default().event("status").retry(Duration::from_secs(2)).data(json),
            // A snapshot is plain data and always serialises; if it ever does not, say so in
            // the stream rather than ending it.
            Err(e) => Event::default().event("error").data(e.to_string()),
        };
        Some((Ok(event), (live, false)))
    })
}
