//! A Modbus TCP test PLC on loopback whose holding register 0 counts up, so every batch
//! carries fresh values.

use std::time::Duration;

use edge_drivers::sim::register_server::{self, RegisterBank, SharedBank};
use tokio_util::sync::CancellationToken;

/// Serves holding registers `initial` from address 0, with register 0 counting up every
/// `period`, until `cancel` fires; returns the port.
pub async fn counting_plc(cancel: &CancellationToken, initial: &[u16], period: Duration) -> u16 {
    let mut bank = RegisterBank::default();
    bank.set_holding(0, initial);
    let bank: SharedBank = bank.shared();
    let (listener, addr) = register_server::bind(super::loopback(0)).await.unwrap();
    tokio::spawn(register_server::serve(listener, bank.clone(), cancel.clone()));
    let c = cancel.clone();
    tokio::spawn(async move {
        let mut n: u16 = 0;
        while !c.is_cancelled() {
            n = n.wrapping_add(1);
            bank.write().unwrap().set_holding(0, &[n]);
            tokio::time::sleep(period).await;
        }
    });
    addr.port()
}
