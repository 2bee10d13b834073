//! METER_MOD (OpenFlow 1.3/1.4 type 29) with DROP bands.

use bytes::{BufMut, BytesMut};

use super::error::DecodeError;
use super::header::Reader;

const OFPMBT_DROP: u16 = 1;

/// `OFPMF_*` meter flags.
pub mod meter_flags {
    pub const KBPS: u16 = 1;
    pub const PKTPS: u16 = 2;
    pub const BURST: u16 = 4;
    pub const STATS: u16 = 8;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MeterCommand {
    Add,
    Modify,
    Delete,
}

/// A DROP band: packets above `rate` (kbit/s or packets/s per the meter flags)
/// with `burst_size` (kbit or packets, used with `BURST`) are dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DropBand {
    pub rate: u32,
    pub burst_size: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MeterMod {
    pub command: MeterCommand,
    /// See [`meter_flags`].
    pub flags: u16,
    pub meter_id: u32,
    pub bands: Vec<DropBand>,
}

impl MeterMod {
    /// A kbit/s drop meter; `burst_kbits` > 0 sets the BURST flag.
    pub fn drop_kbps(
        command: MeterCommand,
        meter_id: u32,
        rate_kbps: u32,
        burst_kbits: u32,
    ) -> Self {
        let mut flags = meter_flags::KBPS;
        if burst_kbits > 0 {
            flags |= meter_flags::BURST;
        }
        MeterMod {
            command,
            flags,
            meter_id,
            bands: vec![DropBand {
                rate: rate_kbps,
                burst_size: burst_kbits,
            }],
        }
    }

    pub fn delete(meter_id: u32) -> Self {
        MeterMod {
            command: MeterCommand::Delete,
            flags: 0,
            meter_id,
            bands: Vec::new(),
        }
    }

    pub(crate) fn encode_body(&self, out: &mut BytesMut) {
        out.put_u16(match self.command {
            MeterCommand::Add => 0,
            MeterCommand::Modify => 1,
            MeterCommand::Delete => 2,
        });
        out.put_u16(self.flags);
        out.put_u32(self.meter_id);
        for band in &self.bands {
            out.put_u16(OFPMBT_DROP);
            out.put_u16(16);
            out.put_u32(band.rate);
            out.put_u32(band.burst_size);
            out.put_u32(0);
        }
    }

    pub(crate) fn decode_body(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body, "meter_mod");
        let command = match r.u16()? {
            0 => MeterCommand::Add,
            1 => MeterCommand::Modify,
            2 => MeterCommand::Delete,
            other => {
                return Err(DecodeError::Unsupported {
                    what: "meter command",
                    value: other.into(),
                });
            }
        };
        let flags = r.u16()?;
        let meter_id = r.u32()?;
        let mut bands = Vec::new();
        while !r.is_empty() {
            let band_type = r.u16()?;
            let len = r.u16()?;
            if band_type != OFPMBT_DROP {
                return Err(DecodeError::Unsupported {
                    what: "meter band type",
                    value: band_type.into(),
                });
            }
            if len != 16 {
                return Err(DecodeError::BadLength {
                    what: "meter band",
                    length: len.into(),
                });
            }
            let rate = r.u32()?;
            let burst_size = r.u32()?;
            r.skip(4)?;
            bands.push(DropBand { rate, burst_size });
        }
        Ok(MeterMod {
            command,
            flags,
            meter_id,
            bands,
        })
    }
}
