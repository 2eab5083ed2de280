//! Serves the simulated sugar mill at the address of each device in the demo config.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use edge_drivers::sim::register_server;
use edge_drivers::sim::sugar_mill::{self, Fault, RunOptions, SugarMill};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::Config;

/// One simulated mill per distinct device address of `config`, each with its own seed.
pub fn mills(config: &Config) -> Vec<(SocketAddr, SugarMill)> {
    let addrs: BTreeSet<SocketAddr> = config.devices.iter().filter_map(|d| d.address.as_deref()?.parse().ok()).collect();
    addrs.into_iter().enumerate().map(|(i, addr)| (addr, SugarMill::new(0x5EED + i as u64))).collect()
}

/// Serves each mill at its address, running from the state it is in; returns the
/// addresses served. `speed`: plant seconds per wall-clock second; `faults`: injected into
/// every mill, each after its wall-clock delay.
pub async fn start(mills: Vec<(SocketAddr, SugarMill)>, speed: f64, faults: &[(Fault, Duration)]) -> anyhow::Result<Vec<SocketAddr>> {
    let cancel = CancellationToken::new(); // the plant lives as long as the demo process
    let mut served = Vec::new();
    for (addr, mill) in mills {
        let (listener, local) = register_server::bind(addr)
            .await
            .with_context(|| format!("cannot start the simulated PLC on {addr} (is the port in use? try --modbus-port)"))?;
        let bank = sugar_mill::initial_bank(&mill).shared();
        let (fault_tx, fault_rx) = tokio::sync::mpsc::unbounded_channel();
        for &(fault, delay) in faults {
            let tx = fault_tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                info!(%fault, "fault injected into the simulated mill");
                let _ = tx.send(fault);
            });
        }
        // At speed the plant is stepped more often, so each step stays short.
        let tick = Duration::from_millis(if speed > 1.0 { 50 } else { 500 });
        let opts = RunOptions { tick, speed, faults: Some(fault_rx) };
        tokio::spawn(sugar_mill::run_with(bank.clone(), mill, opts, cancel.clone()));
        let c = cancel.clone();
        tokio::spawn(async move {
            if let Err(e) = register_server::serve(listener, bank, c).await {
                error!(error = %e, "simulated PLC stopped");
            }
        });
        served.push(local);
    }
    Ok(served)
}
