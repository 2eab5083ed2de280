//! A damaged store, end to end: the real agent binary, real mosquitto, a real Modbus
//! server. The agent starts every time, raises `store_reset`, and the ERP never sees one
//! `batch_seq` with two different contents.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use edge_drivers::sim::register_server::{self, RegisterBank};
use rand::{Rng, SeedableRng};
use support::agent::{config_with, AgentProcess};
use support::broker::Mosquitto;
use support::subscriber::Subscriber;
use support::{free_port, http_get, loopback, metric, wait_for};
use tokio_util::sync::CancellationToken;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let t = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &t)
        } else {
            std::fs::copy(e.path(), t).unwrap();
        }
    }
}

/// Overwrites 4 KiB blocks of sled's `db` file at three seeded positions (torn writes).
fn damage_db(outbox: &Path, seed: u64) {
    let path = outbox.join("db");
    let mut bytes = std::fs::read(&path).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for _ in 0..3 {
        let at = rng.gen_range(0..bytes.len());
        let end = (at + 4096).min(bytes.len());
        bytes[at..end].iter_mut().for_each(|b| *b = rng.gen());
    }
    std::fs::write(&path, &bytes).unwrap();
}

/// Every batch the ERP got, by `batch_seq`: one content (device and samples) per number.
fn assert_no_batch_seq_with_two_contents(erp: &Subscriber) -> u64 {
    let mut seen: HashMap<u64, String> = HashMap::new();
    for b in erp.telemetry() {
        let seq = b["batch_seq"].as_u64().unwrap();
        let content = format!("{}{}", b["device"], b["samples"]);
        let first = seen.entry(seq).or_insert_with(|| content.clone());
        assert_eq!(*first, content, "batch_seq {seq} arrived with two different contents");
    }
    seen.keys().copied().max().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_never_stops_the_agent_and_never_makes_a_batch_seq_mean_two_things() {
    // Given an agent polling a PLC into a broker the ERP subscribes to
    let cancel = CancellationToken::new();
    let mut bank = RegisterBank::default();
    bank.set_holding(0, &[1, 2, 3, 4]);
    let bank = bank.shared();
    let (listener, addr) = register_server::bind(loopback(0)).await.unwrap();
    tokio::spawn(register_server::serve(listener, bank.clone(), cancel.clone()));
    let tags: String = (0..4).map(|i| format!("[[devices.tags]]\nname = \"r{i}\"\ntable = \"holding\"\naddress = {i}\n")).collect();
    let broker = Mosquitto::start().await;
    let erp = Subscriber::start(broker.port, "plant/#").await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let web = free_port();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, config_with(&data, broker.port, addr.port(), web, "", &tags)).unwrap();
    let log = dir.path().join("agent.log");
    let run_until_batch = |above: u64| {
        let erp = &erp;
        async move {
            wait_for("new telemetry at the ERP", Duration::from_secs(30), || {
                (erp.batch_seqs().into_iter().max().unwrap_or(0) > above).then_some(())
            })
            .await
        }
    };
    let resets = || erp.all().into_iter().filter(|m| m.topic.ends_with("/events") && m.json["kind"] == "store_reset").collect::<Vec<_>>();

    // and a copy of its store taken after a first run
    let mut agent = AgentProcess::start(&cfg, log.clone());
    run_until_batch(2).await;
    assert!(agent.terminate(Duration::from_secs(10)), "clean stop");
    let earlier = dir.path().join("earlier");
    copy_dir(&data.join("outbox"), &earlier);
    // and a second run the ERP received more from
    let mut agent = AgentProcess::start(&cfg, log.clone());
    let newest = assert_no_batch_seq_with_two_contents(&erp);
    run_until_batch(newest + 3).await;
    assert!(agent.terminate(Duration::from_secs(10)), "clean stop");
    let newest = assert_no_batch_seq_with_two_contents(&erp);

    // When the store comes back without its newest records (what sled does, without an
    // error, when its log is cut at a damaged segment)
    std::fs::remove_dir_all(data.join("outbox")).unwrap();
    copy_dir(&earlier, &data.join("outbox"));
    bank.write().unwrap().set_holding(0, &[11, 12, 13, 14]);
    let mut agent = AgentProcess::start(&cfg, log.clone());

    // Then the agent reports the loss as a store_reset, within the published contract
    let reset = wait_for("a store_reset for the lost records", Duration::from_secs(30), || resets().into_iter().next()).await;
    let schema = support::schema("event.schema.json");
    assert!(schema.is_valid(&reset.json), "{}", reset.json);
    assert_eq!(reset.json["details"]["reason"], "records_lost", "{}", reset.json);
    assert!(reset.json["details"]["batches_possibly_lost"].as_u64().unwrap() >= 1, "{}", reset.json);
    assert!(reset.json["details"]["next_batch_seq"].as_u64().unwrap() > newest, "{}", reset.json);
    // and continues above every batch_seq the ERP has seen, never reusing one
    run_until_batch(newest + 2).await;
    assert_no_batch_seq_with_two_contents(&erp);
    // and counts it in /metrics and on the status page
    support::wait_listening(loopback(web), Duration::from_secs(10)).await;
    assert_eq!(metric(&http_get(web, "/metrics").await, "edge_agent_store_resets_total"), 1);
    let mut shown = serde_json::Value::Null;
    for _ in 0..50 {
        let status: serde_json::Value = serde_json::from_str(&http_get(web, "/api/status").await).unwrap();
        shown = status["store"]["store_resets"].clone();
        if shown == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(shown, 1, "store_resets on the status page");
    agent.kill9();

    // When its db file is then damaged at seeded positions, twice over
    for seed in [7u64, 8] {
        damage_db(&data.join("outbox"), seed);
        let newest = assert_no_batch_seq_with_two_contents(&erp);
        let before = resets().len();
        bank.write().unwrap().set_holding(0, &[20 + seed as u16, 0, 0, 0]);
        let mut agent = AgentProcess::start(&cfg, log.clone());
        // Then the agent starts every time and publishes new telemetry above what was seen
        run_until_batch(newest + 2).await;
        assert_no_batch_seq_with_two_contents(&erp);
        // and a store that lost anything says so (sled may also have read around the damage)
        let counted = metric(&http_get(web, "/metrics").await, "edge_agent_store_resets_total") as usize;
        wait_for("a store_reset event for every reset counted", Duration::from_secs(10), || {
            (resets().len() - before == counted).then_some(())
        })
        .await;
        for r in resets() {
            assert!(schema.is_valid(&r.json), "{}", r.json);
        }
        agent.kill9();
    }
    cancel.cancel();
}
