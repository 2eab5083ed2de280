//! The status page in a real browser (Debian's chromium, headless, over WebDriver) against
//! `edge-agent demo`: what an operator at the cabinet sees and does. Saves the screenshots
//! the README shows (desktop and phone) under `target/screenshots/`; with
//! `EDGE_AGENT_UPDATE_SCREENSHOTS=1` also into `docs/img/`.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::browser::Browser;
use support::demo::Demo;
use support::page::add_user;
use support::{loopback, wait_listening};

fn screenshot_paths(name: &str) -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut paths = vec![root.join("target/screenshots").join(name)];
    if std::env::var_os("EDGE_AGENT_UPDATE_SCREENSHOTS").is_some() {
        paths.push(root.join("docs/img").join(name));
    }
    paths
}

const LIMIT: Duration = Duration::from_secs(30);

/// The text of the value cell of the first good numeric tag: `[tag, value]`.
const FIRST_VALUE: &str = r##"
    const row = [...document.querySelectorAll("#devices tr[data-tag]")]
        .find(r => r.querySelector(".badge.b-good") && /\d/.test(r.querySelector("td.value").textContent));
    return row ? [row.dataset.tag, row.querySelector("td.value").textContent] : null;
"##;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_sees_devices_live_values_a_trend_and_the_models_without_reloading() {
    // Given the demo plant, and a browser on its status page
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(dir.path(), "127.0.0.1", &[]);
    let web = demo.web;
    wait_listening(loopback(web), LIMIT).await;
    let browser = Browser::start(1280, 1000).await;
    browser.client.goto(&format!("http://127.0.0.1:{web}/")).await.unwrap();

    // Then the device list shows the mill's PLC, connected, with its tags
    let devices = browser
        .wait_for(
            "a connected device with tags",
            LIMIT,
            r##"
            return [...document.querySelectorAll("#devices section.panel.ok h2")].map(h => h.textContent);
        "##,
            |v| v.as_array().is_some_and(|a| !a.is_empty()),
        )
        .await;
    assert!(devices.to_string().contains("mill"), "{devices}");

    // And a tag's value changes while the page stays the same document (no reload)
    browser.eval("window.__sameDocument = true; return null;").await;
    let first = browser.wait_for("a good numeric tag", LIMIT, FIRST_VALUE, |v| v.is_array()).await;
    let tag = first[0].as_str().unwrap().to_string();
    let script = format!(
        r##"const r = document.querySelector('#devices tr[data-tag="{tag}"] td.value');
           return [window.__sameDocument === true, r ? r.textContent : null];"##
    );
    let before = first[1].clone();
    let changed = browser.wait_for(&format!("{tag} to change"), LIMIT, &script, |v| v[1] != before && v[1].is_string()).await;
    assert_eq!(changed[0], true, "the page was reloaded");

    // And every tag has a sparkline of its last hour
    browser
        .wait_for(
            "sparklines",
            LIMIT,
            "return document.querySelectorAll('#devices svg.spark polyline, #devices svg.spark circle').length;",
            |v| v.as_u64().is_some_and(|n| n > 0),
        )
        .await;

    // And the models show their outputs: an anomaly score, a quality estimate, a RUL
    let models = browser
        .wait_for(
            "three models with outputs",
            LIMIT,
            r##"
            return [...document.querySelectorAll("#models section.panel")].map(s => s.textContent);
        "##,
            |v| v.as_array().is_some_and(|a| a.len() == 3 && a.iter().all(|t| !t.as_str().unwrap_or("").contains("Output—"))),
        )
        .await;
    let text = models.to_string();
    for name in ["juice-pump-anomaly", "syrup-purity", "mill-bearing-rul"] {
        assert!(text.contains(name), "{name} missing: {text}");
    }

    // And the anomaly model's panel has a sparkline of its score with points and its threshold
    let spark = browser
        .wait_for(
            "the anomaly score's sparkline",
            LIMIT,
            r##"
            const panel = [...document.querySelectorAll("#models section.panel")].find(s => s.textContent.includes("juice-pump-anomaly"));
            const b = panel ? panel.querySelector("button.model-spark") : null;
            return b ? [b.querySelectorAll("polyline.spark-line, circle.spark-dot").length, b.querySelectorAll("line.spark-limit").length] : null;
        "##,
            |v| v[0].as_u64().is_some_and(|n| n > 0),
        )
        .await;
    assert_eq!(spark[1], 1, "one threshold line: {spark}");
    // When the operator taps it, then the larger trend opens with the score and its threshold
    browser
        .eval(r##"[...document.querySelectorAll("#models section.panel")].find(s => s.textContent.includes("juice-pump-anomaly")).querySelector("button.model-spark").click(); return true;"##)
        .await;
    browser
        .wait_for(
            "the score's trend with its threshold",
            LIMIT,
            r##"
            const d = document.getElementById("trend");
            return d.open && !!d.querySelector("svg.chart polyline.chart-line, svg.chart circle.chart-dot") && !!d.querySelector("svg.chart line.chart-limit");
        "##,
            |v| v == true,
        )
        .await;
    let title = browser.eval("return document.getElementById('trend-title').textContent;").await;
    assert!(title.as_str().unwrap().contains("juice-pump-anomaly_score"), "{title}");
    browser.eval("document.getElementById('trend-close').click(); return true;").await;

    // And the overview shows the gateway's CPU, memory and disk free beside the verdict
    let host = browser
        .wait_for(
            "CPU, memory and disk on the overview",
            LIMIT,
            r##"
            const v = k => { const b = document.querySelector(`#health [data-host="${k}"] b`); return b ? b.textContent : ""; };
            return [v("cpu"), v("memory"), v("disk")];
        "##,
            |v| {
                v.as_array()
                    .is_some_and(|a| a.iter().all(|t| t.as_str().is_some_and(|t| t.contains(char::is_numeric) && !t.contains("unknown"))))
            },
        )
        .await;
    assert!(host[0].as_str().unwrap().contains('%') && host[1].as_str().unwrap().contains("free of"), "{host}");
    assert!(host[2].as_str().unwrap().contains("free"), "{host}");

    // And the mill's PLC shows the poll rate it achieves against the one configured (1 s)
    let rate = browser
        .wait_for(
            "the achieved poll rate",
            LIMIT,
            "const l = document.querySelector('#devices .poll-rate'); return l ? l.textContent : null;",
            |v| v.as_str().is_some_and(|t| t.contains("over the last")),
        )
        .await;
    assert!(rate.as_str().unwrap().contains("configured 1 /s (every 1 s)"), "{rate}");

    // And the stack light's outputs are shown: the running light on (the data path is alive)
    let gpio = browser
        .wait_for(
            "the stack light",
            LIMIT,
            r##"
            const g = document.getElementById("gpio");
            const row = g && !g.hidden ? [...g.querySelectorAll("tr")].find(r => r.textContent.includes("GPIO17")) : null;
            return row ? row.textContent : null;
        "##,
            |v| v.as_str().is_some_and(|t| t.contains("on")),
        )
        .await;
    assert!(gpio.as_str().unwrap().contains("Running"), "{gpio}");

    // And the latest events are listed (the demo's models were loaded, its PLC connected)
    let kinds = browser
        .wait_for(
            "events on the page",
            LIMIT,
            "return [...document.querySelectorAll('#event-list tr.event-row')].map(r => r.dataset.kind);",
            |v| v.as_array().is_some_and(|a| !a.is_empty()),
        )
        .await;
    assert!(kinds.to_string().contains("model_loaded") || kinds.to_string().contains("device_connected"), "{kinds}");

    // When the operator taps the tag's name
    let open = format!(r##"document.querySelector('#devices tr[data-tag="{tag}"] button.tag-link').click(); return true;"##);
    browser.eval(&open).await;
    // Then a trend opens with the tag's last hour, drawn from its samples
    let points = browser
        .wait_for(
            "a trend with points",
            LIMIT,
            r##"
            const d = document.getElementById("trend");
            const line = d.querySelector("svg.chart polyline");
            return d.open && line ? line.getAttribute("points").trim().split(/\s+/).length : 0;
        "##,
            |v| v.as_u64().is_some_and(|n| n >= 2),
        )
        .await;
    assert!(points.as_u64().unwrap() >= 2);
    let title = browser.eval("return document.getElementById('trend-title').textContent;").await;
    assert!(title.as_str().unwrap().contains(&tag), "{title}");
    for path in screenshot_paths("status-trend.png") {
        browser.screenshot(&path).await;
    }

    // When it is closed and the operator searches for that tag
    browser.eval("document.getElementById('trend-close').click(); return true;").await;
    let search = format!(
        r##"const i = document.getElementById("tag-filter"); i.value = "{tag}"; i.dispatchEvent(new Event("input")); return true;"##
    );
    browser.eval(&search).await;
    // Then only that tag is listed
    let rows = browser.eval("return [...document.querySelectorAll('#devices tr[data-tag]')].map(r => r.dataset.tag);").await;
    assert!(rows.as_array().unwrap().iter().all(|r| r.as_str().unwrap().contains(&tag)), "{rows}");
    browser
        .eval(r##"const i = document.getElementById("tag-filter"); i.value = ""; i.dispatchEvent(new Event("input")); return true;"##)
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for path in screenshot_paths("status-desktop.png") {
        browser.screenshot(&path).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_phone_the_page_fits_the_screen_and_says_the_verdict_first() {
    // Given the demo plant and a phone-sized browser (390 × 844 CSS pixels)
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(dir.path(), "127.0.0.1", &[]);
    let web = demo.web;
    wait_listening(loopback(web), LIMIT).await;
    let browser = Browser::start(390, 844).await;
    browser.client.goto(&format!("http://127.0.0.1:{web}/")).await.unwrap();

    // Then the verdict is the first thing below the header, and nothing is wider than the screen
    let verdict = browser
        .wait_for("the verdict", LIMIT, "return document.querySelector('#health .health-word')?.textContent ?? null;", |v| v.is_string())
        .await;
    assert!(["OK", "ATTENTION", "DEGRADED", "FAULT"].iter().any(|w| verdict.as_str().unwrap().to_uppercase().contains(w)), "{verdict}");
    browser
        .wait_for("tags", LIMIT, "return document.querySelectorAll('#devices tr[data-tag]').length;", |v| v.as_u64().is_some_and(|n| n > 0))
        .await;
    let overflow = browser.eval("return document.documentElement.scrollWidth - window.innerWidth;").await;
    assert!(overflow.as_i64().unwrap() <= 0, "the page is {overflow} px wider than the phone");
    // And the tag names are large enough to tap with gloves (at least 44 px high)
    let h = browser.eval("return document.querySelector('#devices button.tag-link').getBoundingClientRect().height;").await;
    assert!(h.as_f64().unwrap() >= 44.0, "tag buttons are {h} px high");
    for path in screenshot_paths("status-phone.png") {
        browser.screenshot(&path).await;
    }
}

/// Fills the login form with `user` and `password` and sends it.
fn login_script(user: &str, password: &str) -> String {
    format!(
        r##"document.getElementById("user").value = "{user}"; document.getElementById("password").value = "{password}"; document.querySelector("form").submit(); return true;"##
    )
}

/// The Events list's row of the first `anomaly_started`: [its id, the text of its last cell,
/// whether that cell has a button].
const ANOMALY_ROW: &str = r##"
    const row = document.querySelector("#event-list tr.event-row[data-kind='anomaly_started']");
    if (!row) return null;
    const cell = row.querySelector("td.ack-cell");
    return [row.dataset.id, cell ? cell.textContent : "", !!(cell && cell.querySelector("button"))];
"##;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_is_refused_an_operator_action_and_an_operator_acknowledges_an_anomaly_on_a_page_bound_to_all_interfaces() {
    // Given the demo with its page on every interface (reached here over loopback), its mill
    // at 600× with a pump cavitation after a second, a viewer and an operator
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    add_user(&users, "tablet", "viewer", "cabinet-view-1");
    add_user(&users, "shift-lead", "operator", "cabinet-lead-1");
    let args: [&std::ffi::OsStr; 6] =
        ["--users-file".as_ref(), users.as_os_str(), "--speed".as_ref(), "600".as_ref(), "--fault".as_ref(), "cavitation@1s".as_ref()];
    let demo = Demo::start(dir.path(), "0.0.0.0", &args);
    let web = demo.web;
    wait_listening(loopback(web), LIMIT).await;
    let browser = Browser::start(1280, 1000).await;

    // When the page is opened, it asks for a login
    browser.client.goto(&format!("http://127.0.0.1:{web}/")).await.unwrap();
    browser
        .wait_for("the login form", LIMIT, "return location.pathname === '/login' && !!document.getElementById('password');", |v| v == true)
        .await;
    // And a wrong password is refused, on the login page still
    browser.eval(&login_script("tablet", "wrong-password")).await;
    browser
        .wait_for(
            "the refusal",
            LIMIT,
            "return location.pathname === '/login' && document.readyState === 'complete' && !!document.getElementById('password');",
            |v| v == true,
        )
        .await;
    // When the viewer logs in with the right one
    browser.eval(&login_script("tablet", "cabinet-view-1")).await;
    // Then the page shows the plant, and who is logged in
    browser.wait_for("the status page", LIMIT, "return location.pathname;", |v| v == "/").await;
    browser.wait_for("live tag values", LIMIT, FIRST_VALUE, |v| v.is_array()).await;
    let who = browser
        .wait_for("the user's name", LIMIT, "return document.getElementById('who')?.textContent ?? '';", |v| {
            v.as_str().is_some_and(|t| !t.is_empty())
        })
        .await;
    assert!(who.as_str().unwrap().contains("tablet") && who.as_str().unwrap().contains("viewer"), "{who}");
    // And a trend opens for a viewer too
    browser.eval("document.querySelector('#devices button.tag-link').click(); return true;").await;
    browser
        .wait_for(
            "a trend with points",
            LIMIT,
            "const l = document.querySelector('#trend svg.chart polyline, #trend svg.chart circle'); return !!l;",
            |v| v == true,
        )
        .await;

    // When the viewer tries an operator action (acknowledging an event), with the page's own token
    let answer = browser
        .client
        .execute_async(
            r##"const done = arguments[arguments.length - 1];
                fetch("api/session").then(r => r.json()).then(s =>
                    fetch("api/events/1/ack", { method: "POST", headers: { "X-CSRF-Token": s.csrf } }))
                  .then(r => r.text().then(t => done([r.status, t])), e => done([0, String(e)]));"##,
            vec![],
        )
        .await
        .unwrap();
    // Then it is refused: a viewer may look, not act
    assert_eq!(answer[0], 403, "{answer}");
    assert!(answer[1].as_str().unwrap().contains("operator role"), "refused for another reason than the role: {answer}");
    // And the anomaly is listed as not acknowledged, with no button to do it
    let row = browser.wait_for("the anomaly in the events", LIMIT, ANOMALY_ROW, |v| v.is_array()).await;
    assert_eq!((row[1].as_str(), row[2].as_bool()), (Some("not acknowledged"), Some(false)), "{row}");

    // When the viewer logs out and the operator logs in
    browser.eval("document.getElementById('logout').click(); return true;").await;
    browser
        .wait_for("the login form again", LIMIT, "return location.pathname === '/login' && !!document.getElementById('password');", |v| {
            v == true
        })
        .await;
    browser.eval(&login_script("shift-lead", "cabinet-lead-1")).await;
    browser.wait_for("the status page", LIMIT, "return location.pathname;", |v| v == "/").await;
    // Then the anomaly has its button, which she presses
    let row = browser.wait_for("the acknowledge button", LIMIT, ANOMALY_ROW, |v| v[2] == true).await;
    let id = row[0].as_str().unwrap().to_string();
    browser.eval(&format!(r##"document.querySelector("#event-list tr[data-id='{id}'] td.ack-cell button").click(); return true;"##)).await;
    // And the row shows it acknowledged, by her
    let done =
        format!(r##"const c = document.querySelector("#event-list tr[data-id='{id}'] td.ack-cell"); return c ? c.textContent : null;"##);
    let text =
        browser.wait_for("the anomaly acknowledged", LIMIT, &done, |v| v.as_str().is_some_and(|t| t.contains("acknowledged "))).await;
    assert!(text.as_str().unwrap().contains("shift-lead"), "{text}");
    browser.eval("document.getElementById('events').scrollIntoView(); return true;").await;
    browser.screenshot(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots/status-events-operator.png")).await;
}
