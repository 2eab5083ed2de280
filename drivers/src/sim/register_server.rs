//! A Modbus TCP server (tokio-modbus) that answers from an in-memory register bank.
//!
//! Used by the simulated plants and by the end-to-end tests as a real protocol peer.
//! Addresses nobody has written are answered with the `IllegalDataAddress` exception, as
//! a PLC does for registers it does not map.

use std::collections::HashMap;
use std::future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use tokio::net::TcpListener;
use tokio_modbus::server::tcp::{accept_tcp_connection, Server};
use tokio_modbus::{ExceptionCode, Request, Response};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// The four Modbus tables of a simulated device.
#[derive(Debug, Default, Clone)]
pub struct RegisterBank {
    pub coils: HashMap<u16, bool>,
    pub discrete: HashMap<u16, bool>,
    pub holding: HashMap<u16, u16>,
    pub input: HashMap<u16, u16>,
}

/// A bank shared between the server and whatever drives the values.
pub type SharedBank = Arc<RwLock<RegisterBank>>;

impl RegisterBank {
    pub fn shared(self) -> SharedBank {
        Arc::new(RwLock::new(self))
    }

    /// Writes consecutive registers starting at `start`.
    pub fn set_holding(&mut self, start: u16, words: &[u16]) {
        for (i, w) in words.iter().enumerate() {
            self.holding.insert(start.wrapping_add(i as u16), *w);
        }
    }

    pub fn set_input(&mut self, start: u16, words: &[u16]) {
        for (i, w) in words.iter().enumerate() {
            self.input.insert(start.wrapping_add(i as u16), *w);
        }
    }
}

fn read_words(table: &HashMap<u16, u16>, start: u16, count: u16) -> Result<Vec<u16>, ExceptionCode> {
    (0..count).map(|i| table.get(&start.wrapping_add(i)).copied().ok_or(ExceptionCode::IllegalDataAddress)).collect()
}

fn read_bits(table: &HashMap<u16, bool>, start: u16, count: u16) -> Result<Vec<bool>, ExceptionCode> {
    (0..count).map(|i| table.get(&start.wrapping_add(i)).copied().ok_or(ExceptionCode::IllegalDataAddress)).collect()
}

struct BankService {
    bank: SharedBank,
}

impl tokio_modbus::server::Service for BankService {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        future::ready(self.answer(req))
    }
}

impl BankService {
    fn answer(&self, req: Request<'static>) -> Result<Response, ExceptionCode> {
        match req {
            Request::ReadHoldingRegisters(a, n) => {
                let bank = self.bank.read().map_err(|_| ExceptionCode::ServerDeviceFailure)?;
                read_words(&bank.holding, a, n).map(Response::ReadHoldingRegisters)
            }
            Request::ReadInputRegisters(a, n) => {
                let bank = self.bank.read().map_err(|_| ExceptionCode::ServerDeviceFailure)?;
                read_words(&bank.input, a, n).map(Response::ReadInputRegisters)
            }
            Request::ReadCoils(a, n) => {
                let bank = self.bank.read().map_err(|_| ExceptionCode::ServerDeviceFailure)?;
                read_bits(&bank.coils, a, n).map(Response::ReadCoils)
            }
            Request::ReadDiscreteInputs(a, n) => {
                let bank = self.bank.read().map_err(|_| ExceptionCode::ServerDeviceFailure)?;
                read_bits(&bank.discrete, a, n).map(Response::ReadDiscreteInputs)
            }
            Request::WriteSingleRegister(a, w) => {
                let mut bank = self.bank.write().map_err(|_| ExceptionCode::ServerDeviceFailure)?;
                if !bank.holding.contains_key(&a) {
                    return Err(ExceptionCode::IllegalDataAddress);
                }
                bank.holding.insert(a, w);
                Ok(Response::WriteSingleRegister(a, w))
            }
            Request::WriteMultipleRegisters(a, words) => {
                let mut bank = self.bank.write().map_err(|_| ExceptionCode::ServerDeviceFailure)?;
                let n = words.len() as u16;
                if (0..n).any(|i| !bank.holding.contains_key(&a.wrapping_add(i))) {
                    return Err(ExceptionCode::IllegalDataAddress);
                }
                bank.set_holding(a, &words);
                Ok(Response::WriteMultipleRegisters(a, n))
            }
            Request::WriteSingleCoil(a, c) => {
                let mut bank = self.bank.write().map_err(|_| ExceptionCode::ServerDeviceFailure)?;
                if !bank.coils.contains_key(&a) {
                    return Err(ExceptionCode::IllegalDataAddress);
                }
                bank.coils.insert(a, c);
                Ok(Response::WriteSingleCoil(a, c))
            }
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }
}

/// Binds a loopback listener on `addr` (port 0 picks a free port) and returns it with its address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Serves `bank` on `listener` until `cancel` fires.
pub async fn serve(listener: TcpListener, bank: SharedBank, cancel: CancellationToken) -> std::io::Result<()> {
    let server = Server::new(listener);
    let on_connected = |stream, socket_addr| {
        let bank = bank.clone();
        async move {
            debug!(%socket_addr, "modbus client connected to simulated device");
            accept_tcp_connection(stream, socket_addr, move |_| Ok(Some(BankService { bank: bank.clone() })))
        }
    };
    let on_process_error = |err| warn!(error = %err, "simulated modbus server connection ended with an error");
    let abort = async move { cancel.cancelled().await };
    server.serve_until(&on_connected, on_process_error, abort).await.map(|_| ())
}
