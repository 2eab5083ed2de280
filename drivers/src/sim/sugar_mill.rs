//! A simulated cane sugar mill: the process behind the PLC that `edge-agent demo` reads.
//!
//! Four assets, each with the few values an operator watches:
//!
//! - **mill tandem**: cane feed, first-mill speed, motor current, mixed-juice flow,
//!   bagasse moisture, and the `mill_running` coil;
//! - **juice heater**: juice in/out temperatures and the steam pressure its controller
//!   needs to hold the outlet at 104 °C;
//! - **evaporator**: brix in and out, vacuum of the last effect, last-effect level;
//! - **boiler**: drum pressure, steam flow, drum level, flue-gas O₂, feed-water temperature
//!   and the `boiler_trip` discrete input.
//!
//! Every value follows its cause through a first-order lag (the mill current follows the
//! feed, the juice flow follows the mill, the boiler's firing follows the steam demand and
//! the drum pressure sags while it catches up), slow random drifts stand for cane quality
//! and operator moves, and each reading carries measurement noise.
//!
//! **Disturbances** arrive at random (a Poisson process each): a gap in the cane supply,
//! a spell of wet cane, a surge in steam demand, a loss of condenser vacuum. They last
//! minutes and show in several tags at once, as real upsets do.
//!
//! **Degradation**: the juice heater fouls. Scale builds on its tubes at a rate that grows
//! with the juice flow, the heat-transfer coefficient falls, and the steam-pressure
//! controller has to raise the steam pressure (so its temperature) to keep the outlet
//! temperature at setpoint: `heater_steam_pressure` creeps from about 1.55 bar to about
//! 2 bar over some 15 hours, with the outlet temperature still on target. At that point
//! the operators switch to the cleaned standby heater and the pressure falls back. The
//! fouling itself is not on the PLC; [`SugarMill::heater_fouling`] gives it as the ground
//! truth for maintenance models.
//!
//! The model never stops the mill nor trips the boiler: `mill_running` stays `true` and
//! `boiler_trip` stays `false`. The simulation owns every register: values written by a
//! Modbus client are overwritten at the next step.
//!
//! Randomness comes from a seeded [`StdRng`], so one seed always gives one trajectory.

use std::sync::PoisonError;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::modbus::decode::encode_registers;
use crate::modbus::types::{ByteOrder, DataType, Table};
pub use crate::sim::mill_condition::Fault;
use crate::sim::mill_condition::{Condition, ConditionReadings, ProcessInputs};
use crate::sim::register_server::{RegisterBank, SharedBank};

/// Where and how one tag of the simulated PLC is held.
///
/// Engineering value = raw × `scale` (no offsets in this PLC).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RegisterPoint {
    /// Tag name, as in `firmware-configs/demo/sugar-mill.toml`.
    pub tag: &'static str,
    pub table: Table,
    /// Protocol (0-based) address of the first register or bit.
    pub address: u16,
    pub data_type: DataType,
    pub byte_order: ByteOrder,
    pub scale: f64,
    pub unit: &'static str,
    /// Range the value stays in during normal operation, disturbances included
    /// (for bits, `(1.0, 1.0)` means always set, `(0.0, 0.0)` never set).
    pub range: (f64, f64),
}

#[allow(clippy::too_many_arguments)] // a table row, read positionally
const fn point(
    tag: &'static str,
    table: Table,
    address: u16,
    data_type: DataType,
    byte_order: ByteOrder,
    scale: f64,
    unit: &'static str,
    range: (f64, f64),
) -> RegisterPoint {
    RegisterPoint { tag, table, address, data_type, byte_order, scale, unit, range }
}

use ByteOrder::{ABCD, BADC, CDAB, DCBA};
use DataType::{Bool, F32, I16, I32, U16, U32};
use Table::{Coil, Discrete, Holding, Input};

/// The register map of the simulated mill PLC, one block per asset so that a poller
/// reads each block with one request: mill 0–19 (bearing and juice pump 8–13), heater 100–119, evaporator 200–219,
/// boiler 300–319.
#[rustfmt::skip]
pub const REGISTER_MAP: &[RegisterPoint] = &[
    // Mill tandem: holding registers 0–7, coil 0.
    point("mill_cane_feed", Holding, 0, U16, ABCD, 0.1, "t/h", (150.0, 400.0)),
    point("mill_speed", Holding, 1, U16, ABCD, 0.01, "rpm", (3.5, 6.5)),
    point("mill_motor_current", Holding, 2, F32, ABCD, 1.0, "A", (200.0, 600.0)),
    point("mill_mixed_juice_flow", Holding, 4, U32, CDAB, 0.001, "m³/h", (150.0, 400.0)),
    point("mill_bagasse_moisture", Holding, 6, U16, ABCD, 0.01, "%", (45.0, 56.0)),
    point("mill_running", Coil, 0, Bool, ABCD, 1.0, "", (1.0, 1.0)),
    // Mill bearing and juice pump (condition monitoring): holding registers 8–13.
    point("mill_bearing_vibration", Holding, 8, U16, ABCD, 0.01, "mm/s", (0.5, 9.0)),
    point("mill_bearing_temp", Holding, 9, U16, ABCD, 0.1, "°C", (45.0, 90.0)),
    point("juice_pump_suction_pressure", Holding, 10, U16, ABCD, 0.001, "bar", (0.2, 1.8)),
    point("juice_pump_discharge_pressure", Holding, 11, U16, ABCD, 0.001, "bar", (2.0, 5.5)),
    point("juice_pump_current", Holding, 12, U16, ABCD, 0.1, "A", (15.0, 60.0)),
    point("juice_pump_vibration", Holding, 13, U16, ABCD, 0.01, "mm/s", (1.0, 12.0)),
    // Juice heater: input registers 100–103.
    point("heater_juice_in_temp", Input, 100, I16, ABCD, 0.1, "°C", (25.0, 45.0)),
    point("heater_juice_out_temp", Input, 101, I16, ABCD, 0.1, "°C", (90.0, 110.0)),
    point("heater_steam_pressure", Input, 102, F32, ABCD, 1.0, "bar", (0.9, 2.5)),
    // Evaporator: holding registers 200–205.
    point("evap_brix_in", Holding, 200, F32, BADC, 1.0, "°Bx", (12.0, 18.0)),
    point("evap_brix_out", Holding, 202, F32, DCBA, 1.0, "°Bx", (55.0, 70.0)),
    point("evap_vacuum", Holding, 204, U16, ABCD, 0.01, "kPa", (10.0, 30.0)),
    point("evap_last_effect_level", Holding, 205, U16, ABCD, 0.1, "%", (15.0, 85.0)),
    // The lab's last syrup purity result, entered on the HMI.
    point("lab_syrup_purity", Holding, 206, U16, ABCD, 0.01, "%", (78.0, 92.0)),
    // Boiler: input registers 300–306, discrete input 300.
    point("boiler_drum_pressure", Input, 300, F32, CDAB, 1.0, "bar", (36.0, 48.0)),
    point("boiler_steam_flow", Input, 302, I32, CDAB, 0.001, "t/h", (80.0, 200.0)),
    point("boiler_drum_level", Input, 304, I16, ABCD, 0.1, "%", (30.0, 70.0)),
    point("boiler_flue_o2", Input, 305, U16, ABCD, 0.01, "%", (1.0, 8.0)),
    point("boiler_feed_water_temp", Input, 306, U16, BADC, 0.1, "°C", (95.0, 115.0)),
    point("boiler_trip", Discrete, 300, Bool, ABCD, 1.0, "", (0.0, 0.0)),
];

/// The register layout of the simulated mill PLC (same as [`REGISTER_MAP`]).
pub fn register_map() -> &'static [RegisterPoint] {
    REGISTER_MAP
}

// ---------------------------------------------------------------------------------------
// Process constants
// ---------------------------------------------------------------------------------------

/// Longest step the integrator takes; longer `dt`s are split.
const MAX_SUBSTEP_S: f64 = 1.0;

const FEED_NOMINAL: f64 = 300.0; // t/h
const JUICE_PER_CANE: f64 = 0.98; // m³ of mixed juice per t of cane
const HEATER_OUT_SETPOINT: f64 = 104.0; // °C
/// Number of transfer units of the clean heater at nominal juice flow.
const HEATER_NTU_CLEAN: f64 = 2.26;
/// Fouling factor (extra resistance relative to the clean one) gained per hour at nominal flow.
const FOULING_PER_HOUR: f64 = 0.025;
/// Fouling factor at which the operators switch to the cleaned standby heater.
const FOULING_CLEANING_LIMIT: f64 = 0.40;
/// Fouling factor a freshly cleaned heater starts with.
const FOULING_AFTER_CLEANING: f64 = 0.005;
/// The steam header cannot give the heater more than this (bar abs).
const HEATER_STEAM_MAX: f64 = 3.0;
const DRUM_PRESSURE_SETPOINT: f64 = 42.5; // bar g
const EVAP_LEVEL_SETPOINT: f64 = 45.0; // %
const DRUM_LEVEL_SETPOINT: f64 = 50.0; // %

/// One kind of upset: idle, or active with a magnitude for some remaining seconds.
#[derive(Debug, Clone)]
struct Disturbance {
    /// Mean time between two starts, seconds.
    mean_interval_s: f64,
    duration_s: (f64, f64),
    magnitude: (f64, f64),
    remaining_s: f64,
    active_magnitude: f64,
}

impl Disturbance {
    fn new(mean_interval_s: f64, duration_s: (f64, f64), magnitude: (f64, f64)) -> Self {
        Self { mean_interval_s, duration_s, magnitude, remaining_s: 0.0, active_magnitude: 0.0 }
    }

    /// Counts down an active upset, or maybe starts one.
    fn advance(&mut self, h: f64, rng: &mut StdRng) {
        if self.remaining_s > 0.0 {
            self.remaining_s -= h;
            if self.remaining_s <= 0.0 {
                self.remaining_s = 0.0;
                self.active_magnitude = 0.0;
            }
        } else if rng.gen::<f64>() < 1.0 - (-h / self.mean_interval_s).exp() {
            self.remaining_s = rng.gen_range(self.duration_s.0..self.duration_s.1);
            self.active_magnitude = rng.gen_range(self.magnitude.0..self.magnitude.1);
        }
    }

    /// The magnitude while active, 0 otherwise.
    fn level(&self) -> f64 {
        self.active_magnitude
    }
}

/// What the transmitters show: process values plus measurement noise.
#[derive(Debug, Clone, Default, PartialEq)]
struct Readings {
    mill_cane_feed: f64,
    mill_speed: f64,
    mill_motor_current: f64,
    mill_mixed_juice_flow: f64,
    mill_bagasse_moisture: f64,
    mill_running: bool,
    condition: ConditionReadings,
    heater_juice_in_temp: f64,
    heater_juice_out_temp: f64,
    heater_steam_pressure: f64,
    evap_brix_in: f64,
    evap_brix_out: f64,
    evap_vacuum: f64,
    evap_last_effect_level: f64,
    boiler_drum_pressure: f64,
    boiler_steam_flow: f64,
    boiler_drum_level: f64,
    boiler_flue_o2: f64,
    boiler_feed_water_temp: f64,
    boiler_trip: bool,
}

/// The process model of the mill. See the module documentation.
#[derive(Debug, Clone)]
pub struct SugarMill {
    rng: StdRng,
    elapsed_s: f64,
    heater_cleanings: u32,

    // Mill tandem.
    /// The feed rate the operators aim at (drifts with cane supply and shifts).
    feed_trend: f64,
    cane_feed: f64,
    mill_speed: f64,
    motor_current: f64,
    /// Relative fibre content of the cane (1 = nominal): more fibre, more torque.
    fibre: f64,
    juice_flow: f64,
    /// Juice flow seen through a slow lag: what the evaporator's level control has adapted to.
    juice_flow_slow: f64,
    moisture_base: f64,
    moisture: f64,

    // Juice heater.
    juice_in_base: f64,
    juice_in_temp: f64,
    /// Fouling factor: fouling resistance relative to the clean heater's, 0 when clean.
    fouling: f64,
    steam_pressure: f64,
    juice_out_temp: f64,

    // Evaporator.
    brix_in: f64,
    syrup_offset: f64,
    brix_out: f64,
    vacuum_base: f64,
    vacuum: f64,
    evap_level_dev: f64,

    // Boiler.
    steam_flow: f64,
    firing: f64,
    drum_pressure: f64,
    drum_level_dev: f64,
    swell: f64,
    o2_base: f64,
    feed_water_temp: f64,

    // Upsets.
    cane_gap: Disturbance,
    wet_cane: Disturbance,
    steam_surge: Disturbance,
    vacuum_loss: Disturbance,

    /// Bearing wear, pump cavitation, syrup purity and the faults (`mill_condition`).
    condition: Condition,

    readings: Readings,
}

impl SugarMill {
    /// A mill in steady operation; `seed` picks its starting point and its whole future.
    pub fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let feed_trend = FEED_NOMINAL + 8.0 * normal(&mut rng);
        let fibre = 1.0 + 0.01 * normal(&mut rng);
        let moisture_base = 50.0 + 0.3 * normal(&mut rng);
        let juice_in_base = 35.0 + 0.8 * normal(&mut rng);
        let fouling = rng.gen_range(0.0..0.08);
        let brix_in = 15.0 + 0.3 * normal(&mut rng);
        let vacuum_base = 16.0 + 0.3 * normal(&mut rng);
        let o2_base = 3.8 + 0.2 * normal(&mut rng);
        let feed_water_temp = 105.0 + 0.5 * normal(&mut rng);

        let juice_flow = JUICE_PER_CANE * feed_trend;
        let steam_pressure = heater_required_pressure(juice_in_base, juice_flow, fouling);
        let steam_flow = boiler_steam_demand(feed_trend, 0.0);
        let condition = Condition::new(
            seed,
            ProcessInputs {
                load: feed_trend / FEED_NOMINAL,
                juice_flow,
                brix_in,
                heater_out_temp: HEATER_OUT_SETPOINT,
                vacuum: vacuum_base,
                wet: 0.0,
            },
        );
        let mut mill = Self {
            rng,
            elapsed_s: 0.0,
            heater_cleanings: 0,
            feed_trend,
            cane_feed: feed_trend,
            mill_speed: mill_speed_for(feed_trend),
            motor_current: motor_current_for(feed_trend, fibre),
            fibre,
            juice_flow,
            juice_flow_slow: juice_flow,
            moisture_base,
            moisture: moisture_base,
            juice_in_base,
            juice_in_temp: juice_in_base,
            fouling,
            steam_pressure,
            juice_out_temp: heater_outlet_for(steam_pressure, juice_in_base, juice_flow, fouling),
            brix_in,
            syrup_offset: 0.0,
            brix_out: syrup_brix_for(brix_in, juice_flow, vacuum_base, 0.0),
            vacuum_base,
            vacuum: vacuum_base,
            evap_level_dev: 0.0,
            steam_flow,
            firing: steam_flow,
            drum_pressure: DRUM_PRESSURE_SETPOINT,
            drum_level_dev: 0.0,
            swell: 0.0,
            o2_base,
            feed_water_temp,
            // A cane-carrier gap every ~90 min: feed down 10–20 % for 3–10 min.
            cane_gap: Disturbance::new(5400.0, (180.0, 600.0), (0.10, 0.20)),
            // Wet cane every ~4 h: bagasse 1–2 points wetter for 20–40 min, poorer combustion.
            wet_cane: Disturbance::new(14_400.0, (1200.0, 2400.0), (1.0, 2.0)),
            // Steam-demand surge every ~2 h: 6–14 t/h more for 2–6 min.
            steam_surge: Disturbance::new(7200.0, (120.0, 360.0), (6.0, 14.0)),
            // Condenser trouble every ~5 h: 3–6 kPa worse vacuum for 5–15 min.
            vacuum_loss: Disturbance::new(18_000.0, (300.0, 900.0), (3.0, 6.0)),
            condition,
            readings: Readings::default(),
        };
        mill.measure();
        mill
    }

    /// Advances the process by `dt` (split into steps of at most a second) and takes a
    /// fresh set of noisy readings. A zero `dt` changes nothing.
    pub fn step(&mut self, dt: Duration) {
        self.step_in(dt, Duration::from_secs_f64(MAX_SUBSTEP_S));
    }

    /// As [`SugarMill::step`], in integration steps of at most `max_substep` (at least
    /// 0.1 s). Long simulations (training data) use 10 s: every lag and drift is integrated
    /// exactly for any step, so only the upsets' start times get coarser.
    pub fn step_in(&mut self, dt: Duration, max_substep: Duration) {
        let total = dt.as_secs_f64();
        if total <= 0.0 {
            return;
        }
        let n = (total / max_substep.as_secs_f64().max(0.1)).ceil().max(1.0);
        let h = total / n;
        for _ in 0..(n as u64) {
            self.integrate(h);
        }
        self.measure();
    }

    /// Writes the current readings into `bank`, every mapped register and bit of it.
    pub fn write_to(&self, bank: &mut RegisterBank) {
        for p in REGISTER_MAP {
            let value = self.value(p.tag).unwrap_or(0.0);
            match p.table {
                Table::Coil => {
                    bank.coils.insert(p.address, value != 0.0);
                }
                Table::Discrete => {
                    bank.discrete.insert(p.address, value != 0.0);
                }
                Table::Holding => bank.set_holding(p.address, &raw_words(value, p)),
                Table::Input => bank.set_input(p.address, &raw_words(value, p)),
            }
        }
    }

    /// The current reading of `tag` in engineering units (bits as 0 or 1), or `None` for
    /// a tag not in [`REGISTER_MAP`].
    pub fn value(&self, tag: &str) -> Option<f64> {
        let r = &self.readings;
        let bit = |b: bool| if b { 1.0 } else { 0.0 };
        Some(match tag {
            "mill_cane_feed" => r.mill_cane_feed,
            "mill_speed" => r.mill_speed,
            "mill_motor_current" => r.mill_motor_current,
            "mill_mixed_juice_flow" => r.mill_mixed_juice_flow,
            "mill_bagasse_moisture" => r.mill_bagasse_moisture,
            "mill_running" => bit(r.mill_running),
            "mill_bearing_vibration" => r.condition.bearing_vibration,
            "mill_bearing_temp" => r.condition.bearing_temp,
            "juice_pump_suction_pressure" => r.condition.pump_suction,
            "juice_pump_discharge_pressure" => r.condition.pump_discharge,
            "juice_pump_current" => r.condition.pump_current,
            "juice_pump_vibration" => r.condition.pump_vibration,
            "lab_syrup_purity" => r.condition.lab_purity,
            "heater_juice_in_temp" => r.heater_juice_in_temp,
            "heater_juice_out_temp" => r.heater_juice_out_temp,
            "heater_steam_pressure" => r.heater_steam_pressure,
            "evap_brix_in" => r.evap_brix_in,
            "evap_brix_out" => r.evap_brix_out,
            "evap_vacuum" => r.evap_vacuum,
            "evap_last_effect_level" => r.evap_last_effect_level,
            "boiler_drum_pressure" => r.boiler_drum_pressure,
            "boiler_steam_flow" => r.boiler_steam_flow,
            "boiler_drum_level" => r.boiler_drum_level,
            "boiler_flue_o2" => r.boiler_flue_o2,
            "boiler_feed_water_temp" => r.boiler_feed_water_temp,
            "boiler_trip" => bit(r.boiler_trip),
            _ => return None,
        })
    }

    /// Ground truth of the heater's degradation, which no register shows: the fouling
    /// resistance relative to the clean heater's (0 clean; the heater is swapped for
    /// cleaning at 0.4).
    pub fn heater_fouling(&self) -> f64 {
        self.fouling
    }

    /// How many times the fouled heater has been swapped for the cleaned standby.
    pub fn heater_cleanings(&self) -> u32 {
        self.heater_cleanings
    }

    /// Starts `fault` now (see [`Fault`]).
    pub fn inject(&mut self, fault: Fault) {
        debug!(%fault, simulated = ?self.elapsed(), "fault injected into the simulated mill");
        self.condition.inject(fault);
    }

    /// Whether faults (cavitation, heater under-heat) also come at random; on by default.
    /// Off gives a clean "normal operation" run; bearing wear goes on either way.
    pub fn set_random_faults(&mut self, on: bool) {
        self.condition.random_faults = on;
    }

    /// Ground truth: wear of the mill bearing, 0 new, 1 failed.
    pub fn bearing_wear(&self) -> f64 {
        self.condition.wear()
    }

    /// Ground truth: hours until the bearing fails at the nominal feed.
    pub fn bearing_rul_hours(&self) -> f64 {
        self.condition.bearing_rul_hours()
    }

    /// Bearings that failed (and were replaced at once) since the start.
    pub fn bearing_failures(&self) -> u32 {
        self.condition.failures()
    }

    /// Ground truth: whether the juice pump is cavitating now.
    pub fn pump_cavitating(&self) -> bool {
        self.condition.cavitating()
    }

    /// Ground truth: whether the heater's steam valve is stuck (juice under-heated).
    pub fn heater_underheating(&self) -> bool {
        self.condition.underheating()
    }

    /// Ground truth: the syrup purity now (%), which the lab samples every 4 h.
    pub fn syrup_purity(&self) -> f64 {
        self.condition.purity()
    }

    /// Lab analyses made since the start (each updates `lab_syrup_purity`).
    pub fn lab_samples(&self) -> u64 {
        self.condition.lab_samples()
    }

    /// Simulated time since [`SugarMill::new`].
    pub fn elapsed(&self) -> Duration {
        Duration::from_secs_f64(self.elapsed_s)
    }

    /// One integration step of `h` seconds (at most [`MAX_SUBSTEP_S`]).
    fn integrate(&mut self, h: f64) {
        self.elapsed_s += h;
        let rng = &mut self.rng;

        self.cane_gap.advance(h, rng);
        self.wet_cane.advance(h, rng);
        self.steam_surge.advance(h, rng);
        self.vacuum_loss.advance(h, rng);
        self.condition.advance_episodes(h);
        let wet = self.wet_cane.level();

        // --- Mill tandem ---------------------------------------------------------------
        ou(&mut self.feed_trend, FEED_NOMINAL, 1800.0, 12.0, h, rng);
        self.feed_trend = self.feed_trend.clamp(265.0, 335.0);
        let feed_target = self.feed_trend * (1.0 - self.cane_gap.level());
        lag(&mut self.cane_feed, feed_target, 45.0, h);
        lag(&mut self.mill_speed, mill_speed_for(self.cane_feed), 15.0, h);
        ou(&mut self.fibre, 1.0, 1200.0, 0.02, h, rng);
        lag(&mut self.motor_current, motor_current_for(self.cane_feed, self.fibre), 5.0, h);
        lag(&mut self.juice_flow, JUICE_PER_CANE * self.cane_feed, 120.0, h);
        lag(&mut self.juice_flow_slow, self.juice_flow, 900.0, h);
        ou(&mut self.moisture_base, 50.0, 1800.0, 0.5, h, rng);
        // Faster feed leaves less time in the nip: the bagasse comes out wetter.
        let moisture_target = self.moisture_base + wet + 0.01 * (self.cane_feed - FEED_NOMINAL);
        lag(&mut self.moisture, moisture_target, 300.0, h);

        // --- Juice heater --------------------------------------------------------------
        ou(&mut self.juice_in_base, 35.0, 3600.0, 1.0, h, rng);
        lag(&mut self.juice_in_temp, self.juice_in_base, 60.0, h);
        self.fouling += FOULING_PER_HOUR / 3600.0 * (self.juice_flow / (JUICE_PER_CANE * FEED_NOMINAL)) * h;
        if self.fouling >= FOULING_CLEANING_LIMIT {
            self.fouling = FOULING_AFTER_CLEANING;
            self.heater_cleanings += 1;
        }
        // The outlet-temperature controller sets the steam pressure; valve and header lag it.
        // A stuck steam valve (heater under-heat fault) gives less than the controller asks.
        let needed = heater_required_pressure(self.juice_in_temp, self.juice_flow, self.fouling);
        let given = (needed - self.condition.steam_drop()).max(1.0);
        lag(&mut self.steam_pressure, given, 40.0, h);
        let outlet = heater_outlet_for(self.steam_pressure, self.juice_in_temp, self.juice_flow, self.fouling);
        lag(&mut self.juice_out_temp, outlet, 30.0, h);

        // --- Evaporator ----------------------------------------------------------------
        ou(&mut self.brix_in, 15.0, 2400.0, 0.35, h, rng);
        ou(&mut self.vacuum_base, 16.0, 900.0, 0.4, h, rng);
        lag(&mut self.vacuum, self.vacuum_base + self.vacuum_loss.level(), 60.0, h);
        ou(&mut self.syrup_offset, 0.0, 1200.0, 0.5, h, rng);
        let syrup = syrup_brix_for(self.brix_in, self.juice_flow, self.vacuum, self.syrup_offset);
        lag(&mut self.brix_out, syrup, 600.0, h);
        ou(&mut self.evap_level_dev, 0.0, 180.0, 3.0, h, rng);

        // --- Boiler --------------------------------------------------------------------
        let demand = boiler_steam_demand(self.cane_feed, self.steam_surge.level());
        lag(&mut self.steam_flow, demand, 20.0, h);
        // Combustion control: firing follows the steam flow, trimmed by the pressure error.
        let firing_target = self.steam_flow + 2.0 * (DRUM_PRESSURE_SETPOINT - self.drum_pressure);
        lag(&mut self.firing, firing_target, 90.0, h);
        // Wet bagasse burns poorly: part of the firing is lost until the control makes it up.
        let effective_firing = self.firing * (1.0 - 0.02 * wet);
        let dp_dt = 0.0012 * (effective_firing - self.steam_flow);
        self.drum_pressure += dp_dt * h;
        // Falling pressure flashes water in the drum: the level swells, and shrinks back.
        lag(&mut self.swell, -300.0 * dp_dt, 20.0, h);
        ou(&mut self.drum_level_dev, 0.0, 60.0, 1.2, h, rng);
        ou(&mut self.o2_base, 3.8, 300.0, 0.25, h, rng);
        ou(&mut self.feed_water_temp, 105.0, 1800.0, 0.8, h, rng);

        // --- Bearing, pump, purity -----------------------------------------------------
        let inputs = self.condition_inputs();
        self.condition.integrate(h, &inputs);
    }

    /// The process values the condition part depends on.
    fn condition_inputs(&self) -> ProcessInputs {
        ProcessInputs {
            load: self.cane_feed / FEED_NOMINAL,
            juice_flow: self.juice_flow,
            brix_in: self.brix_in,
            heater_out_temp: self.juice_out_temp,
            vacuum: self.vacuum,
            wet: self.wet_cane.level(),
        }
    }

    /// Takes a fresh set of readings (process values plus transmitter noise).
    fn measure(&mut self) {
        let inputs = self.condition_inputs();
        let condition = self.condition.measure(&inputs);
        let rng = &mut self.rng;
        let mut noisy = |x: f64, sigma: f64| x + sigma * normal(rng);
        let level_swing = 0.15 * (self.juice_flow - self.juice_flow_slow);
        // Air control lags the fuel: O₂ dips while firing rises; wet bagasse wants more air.
        let o2 = self.o2_base - 0.08 * (self.firing - self.steam_flow) + 0.4 * self.wet_cane.level();
        self.readings = Readings {
            mill_cane_feed: noisy(self.cane_feed, 2.0).max(0.0),
            mill_speed: noisy(self.mill_speed, 0.02).max(0.0),
            mill_motor_current: noisy(self.motor_current, 4.0).max(0.0),
            mill_mixed_juice_flow: noisy(self.juice_flow, 2.5).max(0.0),
            mill_bagasse_moisture: noisy(self.moisture, 0.25).clamp(0.0, 100.0),
            mill_running: true,
            condition,
            heater_juice_in_temp: noisy(self.juice_in_temp, 0.15),
            heater_juice_out_temp: noisy(self.juice_out_temp, 0.15),
            heater_steam_pressure: noisy(self.steam_pressure, 0.01).max(0.0),
            evap_brix_in: noisy(self.brix_in, 0.05).max(0.0),
            evap_brix_out: noisy(self.brix_out, 0.1).max(0.0),
            evap_vacuum: noisy(self.vacuum, 0.1).max(0.0),
            evap_last_effect_level: noisy(EVAP_LEVEL_SETPOINT + self.evap_level_dev + level_swing, 0.5).clamp(0.0, 100.0),
            boiler_drum_pressure: noisy(self.drum_pressure, 0.05),
            boiler_steam_flow: noisy(self.steam_flow, 1.5).max(0.0),
            boiler_drum_level: noisy(DRUM_LEVEL_SETPOINT + self.drum_level_dev + self.swell, 0.6).clamp(0.0, 100.0),
            boiler_flue_o2: noisy(o2, 0.08).clamp(0.0, 21.0),
            boiler_feed_water_temp: noisy(self.feed_water_temp, 0.2),
            boiler_trip: false,
        };
    }
}

/// A state built from [`SugarMill::new`] written into an empty bank: every mapped register
/// and bit is present, so any read of the map succeeds.
pub fn initial_bank(mill: &SugarMill) -> RegisterBank {
    let mut bank = RegisterBank::default();
    mill.write_to(&mut bank);
    bank
}

/// Steps `mill` every `tick` (by `tick` of simulated time) and writes its readings into
/// `bank`, until `cancel` fires. The bank is written once before the first step.
pub async fn run(bank: SharedBank, mill: SugarMill, tick: Duration, cancel: CancellationToken) {
    run_with(bank, mill, RunOptions { tick, speed: 1.0, faults: None }, cancel).await;
}

/// How [`run_with`] drives the mill.
#[derive(Debug)]
pub struct RunOptions {
    /// Wall-clock time between two steps (and two writes of the bank).
    pub tick: Duration,
    /// Simulated seconds per wall-clock second: 1 is real time, 600 runs ten plant minutes
    /// a second (each tick then steps `tick × speed` of plant time).
    pub speed: f64,
    /// Faults to inject while it runs (see [`Fault`]).
    pub faults: Option<tokio::sync::mpsc::UnboundedReceiver<Fault>>,
}

/// As [`run`], faster than real time and with faults injected on demand.
pub async fn run_with(bank: SharedBank, mut mill: SugarMill, mut opts: RunOptions, cancel: CancellationToken) {
    let tick = opts.tick.max(Duration::from_millis(1));
    let speed = if opts.speed.is_finite() && opts.speed > 0.0 { opts.speed } else { 1.0 };
    let step = tick.mul_f64(speed);
    let publish = |mill: &SugarMill| {
        let mut guard = bank.write().unwrap_or_else(PoisonError::into_inner);
        mill.write_to(&mut guard);
    };
    publish(&mill);
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = interval.tick() => {}
        }
        if let Some(faults) = opts.faults.as_mut() {
            while let Ok(fault) = faults.try_recv() {
                mill.inject(fault);
            }
        }
        mill.step(step);
        publish(&mill);
    }
    debug!(simulated = ?mill.elapsed(), "sugar mill simulation stopped");
}

// ---------------------------------------------------------------------------------------
// Steady-state relations
// ---------------------------------------------------------------------------------------

/// First-mill speed the chute-level control settles at for a feed rate (rpm).
fn mill_speed_for(feed: f64) -> f64 {
    2.0 + 0.01 * feed
}

/// Mill motor current for a feed rate and fibre content (A).
fn motor_current_for(feed: f64, fibre: f64) -> f64 {
    (60.0 + 1.25 * feed) * fibre
}

/// Heater effectiveness term `exp(-NTU)`: fouling adds resistance, a faster juice flow
/// carries more heat away but lowers the residence time (U ∝ v^0.8, so NTU ∝ flow^-0.2).
fn heater_exp_ntu(juice_flow: f64, fouling: f64) -> f64 {
    let flow_ratio = (juice_flow / (JUICE_PER_CANE * FEED_NOMINAL)).max(0.1);
    let ntu = HEATER_NTU_CLEAN * flow_ratio.powf(-0.2) / (1.0 + fouling.max(0.0));
    (-ntu).exp()
}

/// Steam pressure (bar abs) that brings the juice to the outlet setpoint.
fn heater_required_pressure(juice_in: f64, juice_flow: f64, fouling: f64) -> f64 {
    let e = heater_exp_ntu(juice_flow, fouling);
    let steam_temp = (HEATER_OUT_SETPOINT - juice_in * e) / (1.0 - e);
    saturation_pressure(steam_temp).clamp(1.0, HEATER_STEAM_MAX)
}

/// Juice outlet temperature for a steam pressure (condensing steam on the shell side).
fn heater_outlet_for(steam_pressure: f64, juice_in: f64, juice_flow: f64, fouling: f64) -> f64 {
    let steam_temp = saturation_temperature(steam_pressure);
    let e = heater_exp_ntu(juice_flow, fouling);
    steam_temp - (steam_temp - juice_in) * e
}

/// Syrup brix: richer juice gives richer syrup; more juice or a poorer vacuum leaves it thinner.
fn syrup_brix_for(brix_in: f64, juice_flow: f64, vacuum: f64, offset: f64) -> f64 {
    63.0 + 0.8 * (brix_in - 15.0) - 0.02 * (juice_flow - JUICE_PER_CANE * FEED_NOMINAL) - 0.4 * (vacuum - 16.0) + offset
}

/// Steam the boiler must raise (t/h): mill turbines and process follow the crush.
fn boiler_steam_demand(feed: f64, surge: f64) -> f64 {
    0.42 * feed + 8.0 + surge
}

// Antoine constants for water, 99–374 °C, pressure in mmHg.
const ANTOINE_A: f64 = 8.140_19;
const ANTOINE_B: f64 = 1810.94;
const ANTOINE_C: f64 = 244.485;
const MMHG_PER_BAR: f64 = 750.062;

/// Saturation pressure of water (bar abs) at `temp` °C.
fn saturation_pressure(temp: f64) -> f64 {
    10f64.powf(ANTOINE_A - ANTOINE_B / (ANTOINE_C + temp)) / MMHG_PER_BAR
}

/// Saturation temperature of water (°C) at `pressure` bar abs.
fn saturation_temperature(pressure: f64) -> f64 {
    ANTOINE_B / (ANTOINE_A - (pressure.max(0.5) * MMHG_PER_BAR).log10()) - ANTOINE_C
}

// ---------------------------------------------------------------------------------------
// Small numerical helpers
// ---------------------------------------------------------------------------------------

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = 1.0 - rng.gen::<f64>(); // (0, 1]: ln stays finite
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// First-order lag of `x` towards `target` with time constant `tau` seconds (exact for any `h`).
fn lag(x: &mut f64, target: f64, tau: f64, h: f64) {
    *x += (target - *x) * (1.0 - (-h / tau).exp());
}

/// Ornstein–Uhlenbeck drift of `x` around `mean`: time constant `tau`, stationary spread `std`.
fn ou(x: &mut f64, mean: f64, tau: f64, std: f64, h: f64, rng: &mut StdRng) {
    let a = (-h / tau).exp();
    *x = mean + (*x - mean) * a + std * (1.0 - a * a).sqrt() * normal(rng);
}

/// The registers a PLC holds for `value` at point `p` (integers rounded, saturated to the type).
fn raw_words(value: f64, p: &RegisterPoint) -> Vec<u16> {
    let raw = value / p.scale;
    let raw = match p.data_type {
        DataType::F32 => raw,
        _ => raw.round(),
    };
    encode_registers(raw, p.data_type, p.byte_order)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use serde::Deserialize;

    use super::*;
    use crate::modbus::decode::decode_registers;
    use crate::validate::Issues;
    use crate::{DeviceConfig, Value};

    const DEMO_CONFIG: &str = include_str!("../../../firmware-configs/demo/sugar-mill.toml");

    /// The demo config file, minus the sections the drivers do not own.
    #[derive(Deserialize)]
    struct DemoFile {
        devices: Vec<DeviceConfig>,
    }

    fn demo_devices() -> Vec<DeviceConfig> {
        toml::from_str::<DemoFile>(DEMO_CONFIG).expect("the demo config parses").devices
    }

    fn point_of(tag: &str) -> &'static RegisterPoint {
        REGISTER_MAP.iter().find(|p| p.tag == tag).unwrap_or_else(|| panic!("{tag} is not in REGISTER_MAP"))
    }

    fn in_range(p: &RegisterPoint, v: f64) -> bool {
        v.is_finite() && v >= p.range.0 && v <= p.range.1
    }

    /// Runs `hours` of simulated time in 1 s steps, calling `each` after every step.
    fn simulate(seed: u64, hours: u64, mut each: impl FnMut(&SugarMill)) -> SugarMill {
        let mut mill = SugarMill::new(seed);
        for _ in 0..hours * 3600 {
            mill.step(Duration::from_secs(1));
            each(&mill);
        }
        mill
    }

    #[test]
    fn every_tag_of_the_demo_config_is_served_and_decodes_to_a_plausible_value() {
        // Given the demo config file and a freshly started mill's register bank
        let devices = demo_devices();
        let bank = initial_bank(&SugarMill::new(7));

        // When each device is validated and each of its tags is read from the bank
        let mut issues = Issues::default();
        for (i, device) in devices.iter().enumerate() {
            device.validate(&format!("devices[{i}]"), &mut issues);
        }

        // Then the config is valid
        assert!(issues.is_empty(), "demo config has issues: {:?}", issues.0);
        // And it names every point of the register map exactly once
        let tags: Vec<_> = devices.iter().flat_map(|d| d.tags.iter()).collect();
        let names: HashSet<_> = tags.iter().map(|t| t.name.as_str()).collect();
        let mapped: HashSet<_> = REGISTER_MAP.iter().map(|p| p.tag).collect();
        assert_eq!(names, mapped);
        assert_eq!(tags.len(), REGISTER_MAP.len());
        for device in &devices {
            assert_eq!(device.address_base, 0, "the register map uses protocol addresses");
        }
        // And every tag agrees with the map, is present in the bank and decodes into its range
        for tag in tags {
            let p = point_of(&tag.name);
            let (table, address) = (tag.table.expect("a table"), tag.address.expect("an address"));
            assert_eq!(table, p.table, "{}: table", tag.name);
            assert_eq!(address, p.address, "{}: address", tag.name);
            assert_eq!(tag.data_type(), p.data_type, "{}: type", tag.name);
            assert_eq!(tag.scale, p.scale, "{}: scale", tag.name);
            assert_eq!(tag.offset, 0.0, "{}: offset", tag.name);
            assert_eq!(tag.unit.as_deref().unwrap_or(""), p.unit, "{}: unit", tag.name);
            if p.data_type != DataType::Bool {
                assert_eq!(tag.byte_order, p.byte_order, "{}: byte order", tag.name);
            }
            let value = match table {
                Table::Coil | Table::Discrete => {
                    let bits = if table == Table::Coil { &bank.coils } else { &bank.discrete };
                    let bit = bits.get(&address).copied().unwrap_or_else(|| panic!("{}: bit missing", tag.name));
                    if bit {
                        1.0
                    } else {
                        0.0
                    }
                }
                Table::Holding | Table::Input => {
                    let words = if table == Table::Holding { &bank.holding } else { &bank.input };
                    let regs: Vec<u16> = (0..tag.data_type().register_count())
                        .map(|i| {
                            words.get(&(address + i)).copied().unwrap_or_else(|| panic!("{}: register {} missing", tag.name, address + i))
                        })
                        .collect();
                    match decode_registers(&regs, &crate::modbus::ModbusTag::build(tag, 0).unwrap())
                        .unwrap_or_else(|e| panic!("{}: {e}", tag.name))
                    {
                        Value::Int(i) => i as f64,
                        Value::Float(f) => f,
                        other => panic!("{}: unexpected {other:?}", tag.name),
                    }
                }
            };
            assert!(in_range(p, value), "{} = {value} {} is outside {:?}", tag.name, p.unit, p.range);
        }
    }

    #[test]
    fn the_register_bank_reads_back_what_the_model_reports() {
        // Given a mill that has run for a while
        let mut mill = SugarMill::new(3);
        for _ in 0..600 {
            mill.step(Duration::from_secs(1));
        }

        // When its readings are written to a bank
        let bank = initial_bank(&mill);

        // Then decoding each register gives the model's value, to the register's resolution
        for p in REGISTER_MAP.iter().filter(|p| matches!(p.table, Table::Holding | Table::Input)) {
            let words = if p.table == Table::Holding { &bank.holding } else { &bank.input };
            let regs: Vec<u16> = (0..p.data_type.register_count()).map(|i| words[&(p.address + i)]).collect();
            let tag = crate::TagConfig {
                name: p.tag.into(),
                table: Some(p.table),
                address: Some(p.address),
                data_type: Some(p.data_type),
                byte_order: p.byte_order,
                scale: p.scale,
                offset: 0.0,
                unit: None,
                description: None,
                ..crate::TagConfig::default()
            };
            let got = match decode_registers(&regs, &crate::modbus::ModbusTag::build(&tag, 0).unwrap()).unwrap() {
                Value::Int(i) => i as f64,
                Value::Float(f) => f,
                other => panic!("{other:?}"),
            };
            let want = mill.value(p.tag).unwrap();
            let tolerance = if p.data_type == DataType::F32 { 1e-3 * want.abs().max(1.0) } else { p.scale * 0.51 };
            assert!((got - want).abs() <= tolerance, "{}: bank has {got}, model has {want}", p.tag);
        }
    }

    #[test]
    fn the_process_stays_within_physical_bounds_over_ten_hours() {
        // Given a mill and its plausible range for every tag
        // When it runs for ten simulated hours in one-second steps
        let mut worst: Vec<(f64, f64)> = vec![(f64::INFINITY, f64::NEG_INFINITY); REGISTER_MAP.len()];
        simulate(11, 10, |mill| {
            for (p, w) in REGISTER_MAP.iter().zip(worst.iter_mut()) {
                let v = mill.value(p.tag).unwrap();
                // Then no reading ever leaves its range
                assert!(in_range(p, v), "{} = {v} left {:?} at {:?}", p.tag, p.range, mill.elapsed());
                *w = (w.0.min(v), w.1.max(v));
            }
        });
        // And the values actually move: no register is stuck (bits excepted)
        for (p, (lo, hi)) in REGISTER_MAP.iter().zip(worst) {
            if p.data_type != DataType::Bool {
                assert!(hi - lo > 0.0, "{} never moved", p.tag);
            }
        }
    }

    #[test]
    fn heater_fouling_makes_the_steam_pressure_creep_up() {
        // Given a mill whose heater starts (nearly) clean
        let mut first_hour = Vec::new();
        let mut sixth_hour = Vec::new();
        let mut out_temps = Vec::new();

        // When it runs for six hours
        let mill = simulate(5, 6, |mill| {
            let t = mill.elapsed().as_secs();
            let p = mill.value("heater_steam_pressure").unwrap();
            if t <= 3600 {
                first_hour.push(p);
            } else if t > 5 * 3600 {
                sixth_hour.push(p);
                out_temps.push(mill.value("heater_juice_out_temp").unwrap());
            }
        });

        // Then the heater has fouled without being cleaned
        assert!(mill.heater_fouling() > 0.1, "fouling {}", mill.heater_fouling());
        assert_eq!(mill.heater_cleanings(), 0);
        // And the steam pressure it needs is clearly higher at the end than at the start
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let (start, end) = (mean(&first_hour), mean(&sixth_hour));
        assert!(end > start + 0.05, "steam pressure went from {start:.3} to {end:.3} bar");
        // While the juice still leaves the heater at its setpoint
        assert!((mean(&out_temps) - HEATER_OUT_SETPOINT).abs() < 0.5, "outlet {}", mean(&out_temps));
    }

    #[test]
    fn a_fouled_heater_is_swapped_for_a_clean_one() {
        // Given a mill
        // When it runs for a day
        let mill = simulate(5, 24, |_| {});

        // Then the heater has been cleaned once and is fouling again
        assert_eq!(mill.heater_cleanings(), 1);
        assert!(mill.heater_fouling() < FOULING_CLEANING_LIMIT);
    }

    #[test]
    fn the_same_seed_gives_the_same_trajectory() {
        // Given two mills with the same seed and one with another
        let mut a = SugarMill::new(42);
        let mut b = SugarMill::new(42);
        let mut c = SugarMill::new(43);

        // When they run an hour side by side
        let mut differs = false;
        for _ in 0..3600 {
            a.step(Duration::from_secs(1));
            b.step(Duration::from_secs(1));
            c.step(Duration::from_secs(1));
            // Then the twins agree at every step, register for register
            assert_eq!(a.readings, b.readings);
            differs |= a.readings != c.readings;
        }
        let (bank_a, bank_b) = (initial_bank(&a), initial_bank(&b));
        assert_eq!(bank_a.holding, bank_b.holding);
        assert_eq!(bank_a.input, bank_b.input);
        // And another seed gives another trajectory
        assert!(differs);
    }

    #[test]
    fn a_zero_step_changes_nothing() {
        // Given a mill
        let mut mill = SugarMill::new(1);
        let before = mill.readings.clone();

        // When it is stepped by nothing
        mill.step(Duration::ZERO);

        // Then its readings are unchanged
        assert_eq!(mill.readings, before);
    }

    #[test]
    fn disturbances_move_the_process_now_and_then() {
        // Given a mill
        // When it runs ten hours
        // Then the cane feed dips below its normal band at least once (a cane-carrier gap)
        let mut lowest = f64::INFINITY;
        simulate(9, 10, |mill| lowest = lowest.min(mill.value("mill_cane_feed").unwrap()));
        assert!(lowest < 250.0, "lowest feed {lowest}");
    }

    /// Mean of `tag` over `seconds` of plant time, in one-second steps.
    fn mean_over(mill: &mut SugarMill, tag: &str, seconds: u64) -> f64 {
        let mut sum = 0.0;
        for _ in 0..seconds {
            mill.step(Duration::from_secs(1));
            sum += mill.value(tag).unwrap();
        }
        sum / seconds as f64
    }

    #[test]
    fn a_wearing_bearing_vibrates_more_runs_hotter_and_has_less_life_left() {
        // Given a mill with a half-worn bearing and no random faults
        let mut mill = SugarMill::new(21);
        mill.set_random_faults(false);
        let (vib0, temp0, rul0) =
            (mean_over(&mut mill, "mill_bearing_vibration", 600), mean_over(&mut mill, "mill_bearing_temp", 600), mill.bearing_rul_hours());

        // When it crushes for another 100 hours (ten-second steps)
        for _ in 0..100 {
            mill.step_in(Duration::from_secs(3600), Duration::from_secs(10));
        }

        // Then vibration and temperature have risen and the life left has fallen by about 100 h
        let (vib1, temp1, rul1) =
            (mean_over(&mut mill, "mill_bearing_vibration", 600), mean_over(&mut mill, "mill_bearing_temp", 600), mill.bearing_rul_hours());
        assert_eq!(mill.bearing_failures(), 0);
        assert!(vib1 > vib0 + 0.3, "vibration {vib0:.2} -> {vib1:.2}");
        assert!(temp1 > temp0 + 1.0, "temperature {temp0:.1} -> {temp1:.1}");
        assert!((rul0 - rul1 - 100.0).abs() < 25.0, "RUL {rul0:.0} h -> {rul1:.0} h");
    }

    #[test]
    fn a_bearing_run_to_failure_is_replaced_and_starts_a_new_life() {
        // Given a mill whose bearing is late in its life
        let mut mill = SugarMill::new(22);
        mill.set_random_faults(false);
        mill.inject(Fault::BearingWear);
        let rul = mill.bearing_rul_hours();
        assert!((30.0..70.0).contains(&rul), "injected wear leaves {rul:.0} h");

        // When it runs past that
        for _ in 0..(rul + 20.0) as u64 {
            mill.step_in(Duration::from_secs(3600), Duration::from_secs(10));
        }

        // Then the bearing failed once and the new one is nearly unworn
        assert_eq!(mill.bearing_failures(), 1);
        assert!(mill.bearing_wear() < 0.1, "wear {}", mill.bearing_wear());
    }

    #[test]
    fn injected_cavitation_drops_suction_and_shakes_the_pump_then_passes() {
        // Given a steady mill
        let mut mill = SugarMill::new(23);
        mill.set_random_faults(false);
        let (suction0, vib0) =
            (mean_over(&mut mill, "juice_pump_suction_pressure", 600), mean_over(&mut mill, "juice_pump_vibration", 600));
        assert!(!mill.pump_cavitating());

        // When the pump cavitates
        mill.inject(Fault::Cavitation);
        mean_over(&mut mill, "juice_pump_vibration", 300);
        let (suction1, vib1) =
            (mean_over(&mut mill, "juice_pump_suction_pressure", 600), mean_over(&mut mill, "juice_pump_vibration", 600));

        // Then suction falls and vibration rises while it lasts
        assert!(mill.pump_cavitating());
        assert!(suction1 < suction0 - 0.4, "suction {suction0:.2} -> {suction1:.2}");
        assert!(vib1 > vib0 + 2.0, "vibration {vib0:.2} -> {vib1:.2}");
        // And after its 30 minutes the pump is back to normal
        mean_over(&mut mill, "juice_pump_vibration", 1200);
        assert!(!mill.pump_cavitating());
        let vib2 = mean_over(&mut mill, "juice_pump_vibration", 600);
        assert!((vib2 - vib0).abs() < 0.5, "vibration after {vib2:.2}, before {vib0:.2}");
    }

    #[test]
    fn an_underheated_heater_takes_the_syrup_purity_below_spec_and_the_lab_sees_it() {
        // Given a steady mill whose syrup is within the 85 % specification
        let mut mill = SugarMill::new(24);
        mill.set_random_faults(false);
        mean_over(&mut mill, "heater_juice_out_temp", 3600);
        assert!(mill.syrup_purity() > 85.5, "purity {}", mill.syrup_purity());
        let outlet0 = mean_over(&mut mill, "heater_juice_out_temp", 600);

        // When the heater's steam valve sticks, for four hours of plant time
        mill.inject(Fault::Underheat);
        let outlet1 = mean_over(&mut mill, "heater_juice_out_temp", 3600);
        let mut lowest = f64::INFINITY;
        let samples = mill.lab_samples();
        for _ in 0..3 * 3600 {
            mill.step(Duration::from_secs(1));
            lowest = lowest.min(mill.syrup_purity());
        }

        // Then the juice leaves the heater colder and the purity falls below spec
        assert!(outlet1 < outlet0 - 5.0, "outlet {outlet0:.1} -> {outlet1:.1}");
        assert!(lowest < 85.0, "lowest purity {lowest:.2}");
        // And a lab analysis was made meanwhile, holding a value close to the truth
        assert!(mill.lab_samples() > samples);
        assert!((mill.value("lab_syrup_purity").unwrap() - 85.0).abs() < 3.0);
    }

    #[test]
    fn without_faults_the_purity_stays_in_spec_and_the_pump_never_cavitates() {
        // Given a mill with random faults off
        let mut mill = SugarMill::new(25);
        mill.set_random_faults(false);
        // When it runs a day (ten-second steps)
        for _ in 0..24 * 360 {
            mill.step_in(Duration::from_secs(10), Duration::from_secs(10));
            // Then the purity stays above 85 % and the pump never cavitates
            assert!(mill.syrup_purity() > 85.0, "purity {} at {:?}", mill.syrup_purity(), mill.elapsed());
            assert!(!mill.pump_cavitating() && !mill.heater_underheating());
        }
    }

    #[test]
    fn faults_have_names_for_the_command_line() {
        for fault in Fault::ALL {
            assert_eq!(fault.name().parse::<Fault>(), Ok(fault));
        }
        assert_eq!("purity".parse::<Fault>(), Ok(Fault::Underheat));
        assert!("meltdown".parse::<Fault>().unwrap_err().contains("cavitation"));
    }

    #[tokio::test]
    async fn run_with_a_speed_runs_the_plant_faster_than_real_time_and_takes_faults() {
        // Given a mill run at 600 times real time with a fault channel
        let bank = RegisterBank::default().shared();
        let cancel = CancellationToken::new();
        let (faults, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut mill = SugarMill::new(26);
        mill.set_random_faults(false);
        let opts = RunOptions { tick: Duration::from_millis(10), speed: 600.0, faults: Some(rx) };
        let task = tokio::spawn(run_with(bank.clone(), mill, opts, cancel.clone()));

        // When a cavitation is injected and half a second goes by (five plant minutes)
        faults.send(Fault::Cavitation).unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(2), task).await.expect("run ends when cancelled").unwrap();

        // Then the pump's suction register shows the cavitation (below 0.8 bar; normal is 1.2)
        let raw = bank.read().unwrap().holding[&10];
        assert!(f64::from(raw) * 0.001 < 0.8, "suction {raw} mbar");
    }

    #[tokio::test]
    async fn run_writes_the_bank_until_cancelled() {
        // Given an empty shared bank and a mill
        let bank = RegisterBank::default().shared();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(bank.clone(), SugarMill::new(2), Duration::from_millis(10), cancel.clone()));

        // When the simulation runs for a few ticks
        tokio::time::sleep(Duration::from_millis(30)).await;
        let first = bank.read().unwrap().holding.clone();
        let changed = tokio::time::timeout(Duration::from_secs(5), async {
            while bank.read().unwrap().holding == first {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        cancel.cancel();

        // Then the values change, every mapped point is present, and the task ends on cancel
        assert!(changed.is_ok(), "the registers never changed");
        for p in REGISTER_MAP {
            let b = bank.read().unwrap();
            let present = match p.table {
                Table::Coil => b.coils.contains_key(&p.address),
                Table::Discrete => b.discrete.contains_key(&p.address),
                Table::Holding => b.holding.contains_key(&p.address),
                Table::Input => b.input.contains_key(&p.address),
            };
            assert!(present, "{} missing", p.tag);
        }
        tokio::time::timeout(Duration::from_secs(2), task).await.expect("run ends when cancelled").unwrap();
    }
}
