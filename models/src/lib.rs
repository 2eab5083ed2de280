//! Local models. The Candle models arrive with their own issue; this crate keeps their place.
