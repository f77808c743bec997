//! Real components tests start in temp dirs on free ports, and stop.

pub mod postgres;
