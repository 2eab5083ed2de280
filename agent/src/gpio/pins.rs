//! The pins themselves, behind a small trait: the Raspberry Pi's GPIO through `rppal` (on
//! ARM builds), or a simulated bank that keeps every level and transition in memory (x86
//! development, the demo, the tests).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use super::config::{Level, Pull};

/// A debounced-input edge as the backend saw it: the pin, its new level, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    pub pin: u8,
    pub level: Level,
    pub at: Instant,
}

#[derive(Debug, thiserror::Error)]
pub enum GpioError {
    #[error("GPIO{pin}: {message}")]
    Pin { pin: u8, message: String },
    #[error("this machine has no Raspberry Pi GPIO ({0}); use backend = \"simulated\" or run on a Pi")]
    NoGpio(String),
}

/// Where edges of the inputs go (a bounded channel: a storm of bounces cannot grow memory).
pub type EdgeSender = std::sync::mpsc::SyncSender<Edge>;

/// A bank of pins.
pub trait Pins: Send {
    /// `rppal` or `simulated`, for the page and the log.
    fn backend(&self) -> &'static str;
    /// Makes `pin` an output at `level`, or sets it.
    fn set(&mut self, pin: u8, level: Level) -> Result<(), GpioError>;
    /// Makes `pin` an input with `pull`; every change of its level is sent to `edges`.
    fn watch(&mut self, pin: u8, pull: Pull, edges: EdgeSender) -> Result<(), GpioError>;
    /// The input's level now.
    fn read(&mut self, pin: u8) -> Result<Level, GpioError>;
}

/// What a simulated bank holds: shared with a [`SimulatedHandle`], so tests (and the page)
/// see the outputs and drive the inputs.
#[derive(Debug, Default)]
struct Bank {
    outputs: BTreeMap<u8, Level>,
    /// Every write that changed an output, in order.
    transitions: Vec<(u8, Level)>,
    inputs: BTreeMap<u8, Level>,
    watchers: BTreeMap<u8, EdgeSender>,
}

/// A simulated bank of pins.
#[derive(Debug, Clone, Default)]
pub struct SimulatedPins {
    bank: Arc<Mutex<Bank>>,
}

/// The other side of a [`SimulatedPins`]: reads outputs, drives inputs.
#[derive(Debug, Clone)]
pub struct SimulatedHandle {
    bank: Arc<Mutex<Bank>>,
}

impl SimulatedPins {
    pub fn new() -> (Self, SimulatedHandle) {
        let pins = SimulatedPins::default();
        let handle = SimulatedHandle { bank: pins.bank.clone() };
        (pins, handle)
    }

    fn bank(&self) -> std::sync::MutexGuard<'_, Bank> {
        self.bank.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl SimulatedHandle {
    fn bank(&self) -> std::sync::MutexGuard<'_, Bank> {
        self.bank.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The output's level (None before its first write).
    pub fn output(&self, pin: u8) -> Option<Level> {
        self.bank().outputs.get(&pin).copied()
    }

    /// Every level change of `pin`, in order.
    pub fn transitions(&self, pin: u8) -> Vec<Level> {
        self.bank().transitions.iter().filter(|(p, _)| *p == pin).map(|(_, l)| *l).collect()
    }

    /// Sets an input's level at `at`, as a contact or a meter would.
    pub fn drive(&self, pin: u8, level: Level, at: Instant) {
        let mut bank = self.bank();
        let changed = bank.inputs.insert(pin, level) != Some(level);
        if changed {
            if let Some(tx) = bank.watchers.get(&pin) {
                let _ = tx.try_send(Edge { pin, level, at });
            }
        }
    }
}

impl Pins for SimulatedPins {
    fn backend(&self) -> &'static str {
        "simulated"
    }

    fn set(&mut self, pin: u8, level: Level) -> Result<(), GpioError> {
        let mut bank = self.bank();
        if bank.outputs.insert(pin, level) != Some(level) {
            bank.transitions.push((pin, level));
        }
        Ok(())
    }

    fn watch(&mut self, pin: u8, pull: Pull, edges: EdgeSender) -> Result<(), GpioError> {
        let mut bank = self.bank();
        let idle = if pull == Pull::Up { Level::High } else { Level::Low };
        bank.inputs.entry(pin).or_insert(idle);
        bank.watchers.insert(pin, edges);
        Ok(())
    }

    fn read(&mut self, pin: u8) -> Result<Level, GpioError> {
        Ok(self.bank().inputs.get(&pin).copied().unwrap_or(Level::Low))
    }
}

#[cfg(any(target_arch = "aarch64", target_arch = "arm"))]
pub use self::rppal_pins::RppalPins;

/// The Raspberry Pi's GPIO (`/dev/gpiomem`, interrupts through the gpiochip device).
#[cfg(any(target_arch = "aarch64", target_arch = "arm"))]
mod rppal_pins {
    use std::collections::BTreeMap;
    use std::time::Instant;

    use rppal::gpio::{Gpio, InputPin, OutputPin, Trigger};

    use super::{EdgeSender, GpioError, Pins};
    use crate::gpio::config::{Level, Pull};

    pub struct RppalPins {
        gpio: Gpio,
        outputs: BTreeMap<u8, OutputPin>,
        inputs: BTreeMap<u8, InputPin>,
    }

    fn err(pin: u8, e: impl std::fmt::Display) -> GpioError {
        GpioError::Pin { pin, message: e.to_string() }
    }

    impl RppalPins {
        pub fn open() -> Result<Self, GpioError> {
            let gpio = Gpio::new().map_err(|e| GpioError::NoGpio(e.to_string()))?;
            Ok(Self { gpio, outputs: BTreeMap::new(), inputs: BTreeMap::new() })
        }
    }

    impl Pins for RppalPins {
        fn backend(&self) -> &'static str {
            "rppal"
        }

        fn set(&mut self, pin: u8, level: Level) -> Result<(), GpioError> {
            if !self.outputs.contains_key(&pin) {
                let p = self.gpio.get(pin).map_err(|e| err(pin, e))?;
                let mut out = if level.is_high() { p.into_output_high() } else { p.into_output_low() };
                // On drop (a clean exit, or a panic that unwinds) the pin returns to an
                // input: a relay board with pull resistors then reads as released.
                out.set_reset_on_drop(true);
                self.outputs.insert(pin, out);
                return Ok(());
            }
            if let Some(out) = self.outputs.get_mut(&pin) {
                if level.is_high() {
                    out.set_high();
                } else {
                    out.set_low();
                }
            }
            Ok(())
        }

        fn watch(&mut self, pin: u8, pull: Pull, edges: EdgeSender) -> Result<(), GpioError> {
            let p = self.gpio.get(pin).map_err(|e| err(pin, e))?;
            let mut input = match pull {
                Pull::None => p.into_input(),
                Pull::Up => p.into_input_pullup(),
                Pull::Down => p.into_input_pulldown(),
            };
            // Debouncing is done by the agent (the same code for every backend, tested).
            input
                .set_async_interrupt(Trigger::Both, None, move |event| {
                    let level = if event.trigger == Trigger::RisingEdge { Level::High } else { Level::Low };
                    let _ = edges.try_send(super::Edge { pin, level, at: Instant::now() });
                })
                .map_err(|e| err(pin, e))?;
            self.inputs.insert(pin, input);
            Ok(())
        }

        fn read(&mut self, pin: u8) -> Result<Level, GpioError> {
            match self.inputs.get(&pin) {
                Some(input) => Ok(if input.is_high() { Level::High } else { Level::Low }),
                None => Err(err(pin, "not configured as an input")),
            }
        }
    }
}

/// The bank `choice` asks for: the Pi's GPIO when asked (or on `auto` where there is one),
/// else a simulated bank.
pub fn open(choice: super::config::BackendChoice) -> Result<Box<dyn Pins>, GpioError> {
    use super::config::BackendChoice;
    match choice {
        BackendChoice::Simulated => Ok(Box::new(SimulatedPins::new().0)),
        #[cfg(any(target_arch = "aarch64", target_arch = "arm"))]
        BackendChoice::Rppal => Ok(Box::new(RppalPins::open()?)),
        #[cfg(any(target_arch = "aarch64", target_arch = "arm"))]
        BackendChoice::Auto => match RppalPins::open() {
            Ok(p) => Ok(Box::new(p)),
            Err(e) => {
                tracing::warn!(error = %e, "gpio: no Raspberry Pi GPIO here, the outputs are simulated (shown on the status page only)");
                Ok(Box::new(SimulatedPins::new().0))
            }
        },
        #[cfg(not(any(target_arch = "aarch64", target_arch = "arm")))]
        BackendChoice::Rppal => Err(GpioError::NoGpio("this build is not for a Raspberry Pi (ARM)".into())),
        #[cfg(not(any(target_arch = "aarch64", target_arch = "arm")))]
        BackendChoice::Auto => Ok(Box::new(SimulatedPins::new().0)),
    }
}
