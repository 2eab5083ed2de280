//! The production calendar in hours from now: shifts with their maintenance crews,
//! planned stops, and work already booked.

/// One occurrence of a shift: the crew (fitters) on site from `start` to `end`.
#[derive(Debug, Clone, PartialEq)]
pub struct Shift {
    pub start: f64,
    pub end: f64,
    pub crew: u32,
}

/// One occurrence of a planned production stop (cleaning, holiday, weekly stop).
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedStop {
    pub name: String,
    pub start: f64,
    pub end: f64,
    /// Crew on site during the stop; `None`: whatever the shifts say.
    pub crew: Option<u32>,
}

/// Maintenance already booked: it takes `crew` from `start` to `end`.
#[derive(Debug, Clone, PartialEq)]
pub struct Booking {
    pub start: f64,
    pub end: f64,
    pub crew: u32,
}

/// Everything the scheduler knows about time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Calendar {
    /// Shift occurrences, any order. None at all: the crew is not limited.
    pub shifts: Vec<Shift>,
    pub stops: Vec<PlannedStop>,
    /// Nothing is proposed to start after this many hours.
    pub horizon: f64,
    pub booked: Vec<Booking>,
}

impl Calendar {
    /// The planned stop in progress at `t`, if any.
    pub fn stop_at(&self, t: f64) -> Option<&PlannedStop> {
        self.stops.iter().find(|s| s.start <= t && t < s.end)
    }

    /// Crew on site at `t` (before bookings): a planned stop's own crew, else the shifts'
    /// (overlapping shifts add up); `u32::MAX` when no shift is configured at all.
    pub fn crew_on_site(&self, t: f64) -> u32 {
        if let Some(crew) = self.stop_at(t).and_then(|s| s.crew) {
            return crew;
        }
        if self.shifts.is_empty() {
            return u32::MAX;
        }
        self.shifts.iter().filter(|s| s.start <= t && t < s.end).map(|s| s.crew).sum()
    }

    /// Crew still free at `t`: on site minus booked.
    pub fn crew_free(&self, t: f64) -> u32 {
        let booked: u32 = self.booked.iter().filter(|b| b.start <= t && t < b.end).map(|b| b.crew).sum();
        self.crew_on_site(t).saturating_sub(booked)
    }

    /// Whether `crew` people are free for the whole of `[start, end)`: checked at `start`
    /// and at every shift, stop or booking boundary inside (the crew only changes there).
    pub fn fits(&self, start: f64, end: f64, crew: u32) -> bool {
        let mut points = vec![start];
        let edges = self
            .shifts
            .iter()
            .flat_map(|s| [s.start, s.end])
            .chain(self.stops.iter().flat_map(|s| [s.start, s.end]))
            .chain(self.booked.iter().flat_map(|b| [b.start, b.end]));
        points.extend(edges.filter(|&t| t > start && t < end));
        points.into_iter().all(|t| self.crew_free(t) >= crew)
    }

    /// Books `crew` for `[start, end)`.
    pub fn book(&mut self, start: f64, end: f64, crew: u32) {
        self.booked.push(Booking { start, end, crew });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day_shift(day: u32, crew: u32) -> Shift {
        let start = 24.0 * day as f64 + 6.0;
        Shift { start, end: start + 8.0, crew }
    }

    #[test]
    fn crew_is_free_only_on_shift_and_bookings_take_from_it() {
        // Given a day shift of three fitters on day 0 and a booking of two of them
        let mut cal = Calendar { shifts: vec![day_shift(0, 3)], horizon: 48.0, ..Default::default() };
        cal.book(8.0, 10.0, 2);

        // Then nobody is free at night, three at 07:00, one during the booking
        assert_eq!(cal.crew_free(2.0), 0);
        assert_eq!(cal.crew_free(7.0), 3);
        assert_eq!(cal.crew_free(9.0), 1);
        // And a two-person job fits before or after the booking, not across it
        assert!(cal.fits(6.0, 8.0, 2));
        assert!(!cal.fits(7.0, 9.0, 2));
        assert!(cal.fits(10.0, 14.0, 2));
        // And not past the end of the shift
        assert!(!cal.fits(12.0, 15.0, 1));
    }

    #[test]
    fn a_planned_stop_with_its_own_crew_overrides_the_shifts() {
        let cal = Calendar {
            shifts: vec![day_shift(0, 1)],
            stops: vec![PlannedStop { name: "sunday".into(), start: 0.0, end: 24.0, crew: Some(6) }],
            horizon: 48.0,
            booked: vec![],
        };
        assert_eq!(cal.crew_free(3.0), 6);
        assert_eq!(cal.crew_free(30.0), 0);
    }

    #[test]
    fn without_shifts_the_crew_is_not_limited() {
        let cal = Calendar { horizon: 10.0, ..Default::default() };
        assert!(cal.fits(0.0, 5.0, 40));
    }
}
