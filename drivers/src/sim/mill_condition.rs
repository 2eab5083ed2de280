//! The faults and the slow degradation of the simulated sugar mill: what the local models
//! (anomaly detection, quality soft sensor, remaining useful life) are there to see.
//!
//! - **Mill bearing wear** (remaining useful life): the first mill's main bearing wears at a
//!   rate that grows with the crush (cane feed to the power 1.5) and with the wear itself,
//!   `dw/dt = k·m·L^1.5·(w + 0.5)`, so a new bearing lasts about 500 h at the nominal feed.
//!   The bearing's vibration (mm/s RMS) and temperature rise with the wear; at `w = 1` the
//!   bearing fails and the simulation fits a new one at once (a real mill would stop for a
//!   day). Each bearing gets its own rate multiplier `m` (±5 %).
//! - **Juice pump cavitation** (anomaly): now and then (about every 10 h, 15–45 min) the
//!   mixed-juice tank runs low and the pump cavitates: suction pressure falls, discharge
//!   pressure and motor current sag and fluctuate, vibration rises in spikes. Normal upsets
//!   (a cane gap lowers the flow, so the discharge pressure rises) look different.
//! - **Syrup purity** (quality): the purity of the syrup leaving the evaporator (the lab
//!   value, %) follows cane quality (the brix of the clear juice), the clarification (the
//!   heater outlet temperature: under-heated juice clarifies badly), wet cane and the
//!   evaporator's vacuum, through a 30 min lag, plus a slow drift no tag shows (what the
//!   last lab value corrects). A **heater under-heat** episode (the steam valve sticks:
//!   about every 30 h, 1–2 h) drops the outlet temperature by some 8 °C and takes the
//!   purity below the usual 85 % specification. The lab analyses a sample every 4 h: the
//!   `lab_syrup_purity` register holds the last result.
//!
//! Every fault can also be injected on demand ([`Fault`]), and the random ones can be
//! switched off for a clean "normal operation" run. This part draws from its own random
//! generator, so the older tags of a seed move as they did before it existed.

use std::fmt;
use std::str::FromStr;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A fault that can be injected into the running mill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The juice pump cavitates for 30 min (plant time).
    Cavitation,
    /// The heater's steam valve sticks for 2 h: under-heated juice, poor clarification,
    /// syrup purity below specification.
    Underheat,
    /// The mill bearing jumps to late-stage wear (about two days left at the nominal feed).
    BearingWear,
}

impl Fault {
    pub const ALL: [Fault; 3] = [Fault::Cavitation, Fault::Underheat, Fault::BearingWear];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Cavitation => "cavitation",
            Fault::Underheat => "underheat",
            Fault::BearingWear => "bearing",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cavitation" => Ok(Fault::Cavitation),
            "underheat" | "purity" => Ok(Fault::Underheat),
            "bearing" | "bearing-wear" => Ok(Fault::BearingWear),
            other => Err(format!("unknown fault {other:?}: expected cavitation, underheat (or purity) or bearing")),
        }
    }
}

/// Wear rate constant (per hour): a new bearing lasts ln(3)/k ≈ 500 h at the nominal feed.
pub const BEARING_RATE_PER_HOUR: f64 = 0.002_197;
/// Offset of the wear law `dw/dt = k·m·L^1.5·(w + BEARING_OFFSET)`.
const BEARING_OFFSET: f64 = 0.5;
/// Wear the injected [`Fault::BearingWear`] sets (about 48 h left at the nominal feed).
pub const BEARING_LATE_WEAR: f64 = 0.85;
/// Nominal mixed-juice flow (m³/h) the pump is sized for.
const PUMP_FLOW_NOMINAL: f64 = 294.0;
/// Seconds between two lab analyses of the syrup.
pub const LAB_EVERY_S: f64 = 4.0 * 3600.0;
/// Purity the syrup has with nominal cane, a hot heater and dry cane (%).
const PURITY_BASE: f64 = 86.8;
/// How many bar the stuck steam valve costs the heater at full severity.
pub const UNDERHEAT_STEAM_DROP: f64 = 0.45;

/// An episode that comes at random (Poisson) or on demand, and ramps its severity in and out.
#[derive(Debug, Clone)]
struct Episode {
    mean_interval_s: f64,
    duration_s: (f64, f64),
    remaining_s: f64,
    /// 0..1, follows on/off through a lag of `ramp_s`.
    severity: f64,
    ramp_s: f64,
}

impl Episode {
    fn new(mean_interval_s: f64, duration_s: (f64, f64), ramp_s: f64) -> Self {
        Self { mean_interval_s, duration_s, remaining_s: 0.0, severity: 0.0, ramp_s }
    }

    fn advance(&mut self, h: f64, random: bool, rng: &mut StdRng) {
        if self.remaining_s > 0.0 {
            self.remaining_s = (self.remaining_s - h).max(0.0);
        } else if random && rng.gen::<f64>() < 1.0 - (-h / self.mean_interval_s).exp() {
            self.remaining_s = rng.gen_range(self.duration_s.0..self.duration_s.1);
        }
        let target = if self.remaining_s > 0.0 { 1.0 } else { 0.0 };
        lag(&mut self.severity, target, self.ramp_s, h);
    }

    fn force(&mut self, duration_s: f64) {
        self.remaining_s = self.remaining_s.max(duration_s);
    }

    fn active(&self) -> bool {
        self.remaining_s > 0.0
    }
}

/// What the condition part needs from the rest of the process at each step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProcessInputs {
    /// Cane feed relative to nominal (1 = 300 t/h).
    pub load: f64,
    /// Mixed-juice flow, m³/h.
    pub juice_flow: f64,
    pub brix_in: f64,
    pub heater_out_temp: f64,
    pub vacuum: f64,
    /// Wet-cane upset magnitude (0 when dry).
    pub wet: f64,
}

/// The readings of the condition tags (engineering units).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ConditionReadings {
    pub bearing_vibration: f64,
    pub bearing_temp: f64,
    pub pump_suction: f64,
    pub pump_discharge: f64,
    pub pump_current: f64,
    pub pump_vibration: f64,
    pub lab_purity: f64,
}

/// Faults and degradation of the mill. See the module documentation.
#[derive(Debug, Clone)]
pub(crate) struct Condition {
    rng: StdRng,
    /// Whether faults also come at random (on by default).
    pub random_faults: bool,
    // Bearing.
    wear: f64,
    wear_rate: f64,
    bearing_temp: f64,
    failures: u32,
    // Pump.
    suction_base: f64,
    cavitation: Episode,
    // Purity.
    underheat: Episode,
    purity: f64,
    purity_drift: f64,
    since_lab_s: f64,
    lab_purity: f64,
    lab_samples: u64,
}

impl Condition {
    pub fn new(seed: u64, inputs: ProcessInputs) -> Self {
        // Its own stream: the rest of the mill draws exactly as it did before this part existed.
        let mut rng = StdRng::seed_from_u64(seed ^ 0x00C0_DE0F_BEA1);
        let wear = rng.gen_range(0.0..0.5);
        let wear_rate = 1.0 + 0.05 * normal(&mut rng);
        let purity = purity_target(&inputs, 0.0);
        let mut c = Self {
            rng,
            random_faults: true,
            wear,
            wear_rate,
            bearing_temp: bearing_temp_target(inputs.load, wear),
            failures: 0,
            suction_base: 1.2,
            // The juice tank runs low about every 10 h, for 15–45 min.
            cavitation: Episode::new(36_000.0, (900.0, 2700.0), 60.0),
            // The heater's steam valve sticks about every 30 h, for 1–2 h.
            underheat: Episode::new(108_000.0, (3600.0, 7200.0), 120.0),
            purity,
            purity_drift: 0.0,
            since_lab_s: 0.0,
            lab_purity: purity,
            lab_samples: 0,
        };
        c.lab_purity = (c.purity + 0.15 * normal(&mut c.rng)).clamp(75.0, 95.0);
        c
    }

    /// Starts `fault` now (see [`Fault`] for what each does and how long).
    pub fn inject(&mut self, fault: Fault) {
        match fault {
            Fault::Cavitation => self.cavitation.force(1800.0),
            Fault::Underheat => self.underheat.force(7200.0),
            Fault::BearingWear => self.wear = self.wear.max(BEARING_LATE_WEAR),
        }
    }

    /// How much steam pressure (bar) the stuck valve takes from the heater right now.
    pub fn steam_drop(&self) -> f64 {
        UNDERHEAT_STEAM_DROP * self.underheat.severity
    }

    /// Advances the episodes by `h` seconds; call before the heater is integrated.
    pub fn advance_episodes(&mut self, h: f64) {
        let random = self.random_faults;
        self.cavitation.advance(h, random, &mut self.rng);
        self.underheat.advance(h, random, &mut self.rng);
    }

    /// Integrates wear, temperatures and purity by `h` seconds.
    pub fn integrate(&mut self, h: f64, p: &ProcessInputs) {
        let rng = &mut self.rng;
        // Bearing.
        let load = p.load.max(0.0);
        self.wear += BEARING_RATE_PER_HOUR / 3600.0 * self.wear_rate * load.powf(1.5) * (self.wear + BEARING_OFFSET) * h;
        if self.wear >= 1.0 {
            self.failures += 1;
            self.wear = rng.gen_range(0.0..0.02);
            self.wear_rate = 1.0 + 0.05 * normal(rng);
        }
        lag(&mut self.bearing_temp, bearing_temp_target(load, self.wear), 600.0, h);
        // Pump suction follows the juice tank's level.
        ou(&mut self.suction_base, 1.2, 600.0, 0.04, h, rng);
        // Purity.
        ou(&mut self.purity_drift, 0.0, 10_800.0, 0.25, h, rng);
        let target = purity_target(p, self.purity_drift);
        lag(&mut self.purity, target, 1800.0, h);
        self.since_lab_s += h;
        if self.since_lab_s >= LAB_EVERY_S {
            self.since_lab_s -= LAB_EVERY_S;
            self.lab_purity = (self.purity + 0.15 * normal(rng)).clamp(75.0, 95.0);
            self.lab_samples += 1;
        }
    }

    /// Noisy readings of the condition tags.
    pub fn measure(&mut self, p: &ProcessInputs) -> ConditionReadings {
        let rng = &mut self.rng;
        let load = p.load.max(0.0);
        let q = (p.juice_flow / PUMP_FLOW_NOMINAL).max(0.0);
        let s = self.cavitation.severity;
        let suction = self.suction_base - 0.7 * s;
        // Pump curve: more flow, less head; cavitation loses head and makes it unsteady.
        let discharge = suction + 3.4 - 0.6 * (q - 1.0) - 0.9 * s + 0.15 * s * normal(rng);
        let current = 42.0 * q.powf(0.9) - 6.0 * s + 1.5 * s * normal(rng);
        let pump_vibration = 1.8 + 0.3 * (q - 1.0).abs() + 3.5 * s + (1.2 * s * normal(rng)).abs();
        let mut noisy = |x: f64, sigma: f64| x + sigma * normal(rng);
        ConditionReadings {
            bearing_vibration: noisy(1.4 + 0.25 * load + 5.0 * self.wear, 0.12).max(0.0),
            bearing_temp: noisy(self.bearing_temp, 0.2),
            pump_suction: noisy(suction, 0.02).max(0.0),
            pump_discharge: noisy(discharge, 0.03).max(0.0),
            pump_current: noisy(current, 0.4).max(0.0),
            pump_vibration: noisy(pump_vibration, 0.08).max(0.0),
            lab_purity: self.lab_purity,
        }
    }

    pub fn wear(&self) -> f64 {
        self.wear
    }

    /// Hours until the bearing fails if the mill keeps crushing at the nominal feed.
    pub fn bearing_rul_hours(&self) -> f64 {
        ((1.0 + BEARING_OFFSET) / (self.wear + BEARING_OFFSET)).ln() / (BEARING_RATE_PER_HOUR * self.wear_rate)
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn cavitating(&self) -> bool {
        self.cavitation.active() || self.cavitation.severity > 0.05
    }

    pub fn underheating(&self) -> bool {
        self.underheat.active() || self.underheat.severity > 0.05
    }

    pub fn purity(&self) -> f64 {
        self.purity
    }

    pub fn lab_samples(&self) -> u64 {
        self.lab_samples
    }
}

/// Bearing temperature (°C) the bearing settles at for a load and a wear.
fn bearing_temp_target(load: f64, wear: f64) -> f64 {
    52.0 + 8.0 * load + 18.0 * wear
}

/// Syrup purity (%) the process tends to: cane quality, clarification, wet cane, vacuum.
fn purity_target(p: &ProcessInputs, drift: f64) -> f64 {
    let underheat = (103.5 - p.heater_out_temp).max(0.0);
    PURITY_BASE + 0.5 * (p.brix_in - 15.0) - 0.4 * underheat - 0.35 * p.wet - 0.04 * (p.vacuum - 16.0) + drift
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = 1.0 - rng.gen::<f64>();
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn lag(x: &mut f64, target: f64, tau: f64, h: f64) {
    *x += (target - *x) * (1.0 - (-h / tau).exp());
}

fn ou(x: &mut f64, mean: f64, tau: f64, std: f64, h: f64, rng: &mut StdRng) {
    let a = (-h / tau).exp();
    *x = mean + (*x - mean) * a + std * (1.0 - a * a).sqrt() * normal(rng);
}
