//! The status page's data behind its trends: `/api/tags` lists every tag of the demo plant
//! with its value, `/api/tags/{device}/{tag}/history` answers a tag's recent history, and
//! `/api/stream` pushes the status as Server-Sent Events. Against `edge-agent demo` (a real
//! agent, its simulated mill served over Modbus TCP on loopback, its embedded broker).

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::demo::Demo;
use support::{http_get, http_get_any, loopback, wait_listening};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tags_history_has_a_point_per_poll_and_a_bad_query_is_refused_naming_the_key() {
    // Given the demo plant running for a few seconds
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(dir.path(), "127.0.0.1", &[]);
    let web = demo.web;
    wait_listening(loopback(web), Duration::from_secs(20)).await;

    // When the tag list is asked for until a mill tag has a history of several points
    let started = Instant::now();
    let (tag, series) = loop {
        let tags: Vec<Value> = serde_json::from_str(&http_get(web, "/api/tags").await).unwrap();
        let numeric = tags.iter().find(|t| t["history"] == true && t["value"].is_number());
        if let Some(t) = numeric {
            let path = format!("/api/tags/{}/{}/history?from=10m", t["device"].as_str().unwrap(), t["tag"].as_str().unwrap());
            let series: Value = serde_json::from_str(&http_get(web, &path).await).unwrap();
            if series["points"].as_array().unwrap().len() >= 3 {
                break (t.clone(), series);
            }
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no tag with 3 points of history after 30 s: {tags:#?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // Then the tag list carries value, unit, quality and age
    assert_eq!(tag["quality"], "good", "{tag:#}");
    assert!(tag["age_s"].as_f64().unwrap() < 30.0, "{tag:#}");
    // And the history is the tag's samples at full rate, oldest first, in its unit's numbers
    assert_eq!(series["resolution"], "raw", "{series:#}");
    let points = series["points"].as_array().unwrap();
    let times: Vec<&str> = points.iter().map(|p| p["ts"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "not in time order: {times:?}");
    assert!(points.iter().all(|p| p["avg"].is_number() && p["min"] == p["avg"] && p["max"] == p["avg"]), "{series:#}");
    // And the history started after `from` (ten minutes ago), which it says
    let covered = series["covered_from"].as_str().unwrap();
    assert!(covered > series["from"].as_str().unwrap(), "{series:#}");

    // And the status and /metrics carry the gateway's memory and disk, and the device's
    // configured poll rate (the demo polls its PLC once a second)
    let status: Value = serde_json::from_str(&http_get(web, "/api/status").await).unwrap();
    let host = &status["host"];
    assert!(host["memory_total_bytes"].as_u64().is_some_and(|b| b > 0) && host["disk_free_bytes"].as_u64().is_some(), "{host:#}");
    let device = tag["device"].as_str().unwrap();
    assert_eq!(status["devices"][device]["poll_rate"]["configured_per_s"], 1.0, "{:#}", status["devices"][device]);
    let metrics = http_get(web, "/metrics").await;
    assert!(metrics.lines().any(|l| l.starts_with("edge_agent_host_memory_total_bytes ")), "{metrics}");
    assert!(metrics.lines().any(|l| l.starts_with("edge_agent_data_dir_disk_free_bytes ")), "{metrics}");
    let configured = format!("edge_agent_device_configured_polls_per_second{{device=\"{device}\"}} 1");
    assert!(metrics.lines().any(|l| l == configured), "{metrics}");

    // When the same tag is asked per minute
    let path = format!("/api/tags/{}/{}/history?from=10m&step=1m", tag["device"].as_str().unwrap(), tag["tag"].as_str().unwrap());
    let per_minute: Value = serde_json::from_str(&http_get(web, &path).await).unwrap();
    // Then it comes as min/avg/max per 60 s
    assert_eq!(per_minute["resolution"], "aggregate");
    assert_eq!(per_minute["step_s"], 60);
    let p = &per_minute["points"][0];
    assert!(p["min"].as_f64().unwrap() <= p["avg"].as_f64().unwrap() && p["avg"].as_f64().unwrap() <= p["max"].as_f64().unwrap(), "{p:#}");

    // When a query is malformed, or the tag unknown
    let (status, body) = http_get_any(
        web,
        &format!("/api/tags/{}/{}/history?from=yesterday", tag["device"].as_str().unwrap(), tag["tag"].as_str().unwrap()),
    )
    .await;
    // Then the answer is 400 naming the key, or 404 naming the tag
    assert!(status.contains(" 400 "), "{status}");
    assert!(body.contains("from=\"yesterday\""), "{body}");
    let (status, body) = http_get_any(web, "/api/tags/no-such-plc/nothing/history").await;
    assert!(status.contains(" 404 "), "{status}");
    assert!(body.contains("\"nothing\""), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_is_pushed_as_server_sent_events_every_second() {
    // Given the demo plant
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(dir.path(), "127.0.0.1", &[]);
    let web = demo.web;
    wait_listening(loopback(web), Duration::from_secs(20)).await;

    // When a client opens the event stream and reads for a while
    let mut stream = tokio::net::TcpStream::connect(loopback(web)).await.unwrap();
    stream.write_all(b"GET /api/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n").await.unwrap();
    let mut text = String::new();
    let started = Instant::now();
    while text.matches("event: status").count() < 3 {
        let mut buf = [0u8; 65536];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.expect("an event within 5 s").unwrap();
        assert!(n > 0, "the stream ended: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        assert!(started.elapsed() < Duration::from_secs(10), "fewer than 3 status events in 10 s");
    }

    // Then it is an event stream with a reconnect delay, each event the status JSON
    assert!(text.starts_with("HTTP/1.1 200"), "{}", text.lines().next().unwrap_or_default());
    assert!(text.to_ascii_lowercase().contains("content-type: text/event-stream"), "{text}");
    assert!(text.contains("retry: 2000"), "{text}");
    let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
    let status: Value = serde_json::from_str(data).unwrap();
    assert!(status["devices"].as_object().is_some_and(|d| !d.is_empty()), "{status:#}");
    assert!(status["health"]["state"].is_string(), "{status:#}");
    // And a second later the next one (three in well under ten seconds, not one per poll)
    assert!(started.elapsed() >= Duration::from_millis(1500), "three events in {:?}: pushed faster than once a second", started.elapsed());
}
