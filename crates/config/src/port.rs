//! TCP/UDP port numbers, which are never 0 where a port is required.

use serde::de::{Deserialize, Deserializer, Error as _};
use std::fmt;
use std::num::NonZeroU16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortNumber(NonZeroU16);

impl PortNumber {
    pub fn new(n: u32) -> Option<Self> {
        u16::try_from(n)
            .ok()
            .and_then(NonZeroU16::new)
            .map(PortNumber)
    }

    pub fn get(self) -> u16 {
        self.0.get()
    }
}

impl fmt::Display for PortNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for PortNumber {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(deserializer)?;
        u32::try_from(n)
            .ok()
            .and_then(PortNumber::new)
            .ok_or_else(|| D::Error::custom(format!("port must be between 1-65535, got {n}")))
    }
}

impl serde::Serialize for PortNumber {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u16(self.get())
    }
}
