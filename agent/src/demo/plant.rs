//! Serves the simulated sugar mill at the address of each device in the demo config.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use edge_drivers::sim::register_server;
use edge_drivers::sim::sugar_mill::{self, SugarMill};
use tokio_util::sync::CancellationToken;
use tracing::error;

use crate::config::Config;

/// Starts one simulated mill per distinct device address; returns the addresses served.
pub async fn start(config: &Config) -> anyhow::Result<Vec<SocketAddr>> {
    let addrs: BTreeSet<SocketAddr> = config.devices.iter().filter_map(|d| d.address.as_deref()?.parse().ok()).collect();
    let cancel = CancellationToken::new(); // the plant lives as long as the demo process
    let mut served = Vec::new();
    for (i, addr) in addrs.into_iter().enumerate() {
        let (listener, local) = register_server::bind(addr)
            .await
            .with_context(|| format!("cannot start the simulated PLC on {addr} (is the port in use? try --modbus-port)"))?;
        let mill = SugarMill::new(0x5EED + i as u64);
        let bank = sugar_mill::initial_bank(&mill).shared();
        tokio::spawn(sugar_mill::run(bank.clone(), mill, Duration::from_millis(500), cancel.clone()));
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
