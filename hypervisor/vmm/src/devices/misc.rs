//! Small legacy devices: i8042 keyboard controller (reset path), port 0x80 POST sink, port
//! 0x92 (fast A20 / fast reset) and 0xcf9 (PCI reset control).

/// What a write to one of these devices asks of the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MiscEffect {
    None,
    Reset,
}

/// Minimal i8042: status 0x64, data 0x60; commands 0x20/0x60 (command byte), 0xaa (self test),
/// 0xd1 (write output port; bit 0 clear = reset), 0xfe (pulse reset). No keyboard is attached.
#[derive(Debug, Clone, Default)]
pub struct I8042 {
    cmd_byte: u8,
    out: Option<u8>,
    pending_cmd: Option<u8>,
}

impl I8042 {
    pub fn handles(port: u16) -> bool {
        matches!(port, 0x60 | 0x64)
    }
    pub fn io_read(&mut self, port: u16) -> u8 {
        match port {
            0x64 => 0x14 | self.out.is_some() as u8, // system flag, unlocked, output-full bit
            _ => self.out.take().unwrap_or(0),
        }
    }
    pub fn io_write(&mut self, port: u16, v: u8) -> MiscEffect {
        match port {
            0x64 => match v {
                0x20 => self.out = Some(self.cmd_byte),
                0x60 | 0xd1 => self.pending_cmd = Some(v),
                0xaa => self.out = Some(0x55),
                0xab => self.out = Some(0x00),
                0xfe => return MiscEffect::Reset,
                _ => {}
            },
            _ => match self.pending_cmd.take() {
                Some(0x60) => self.cmd_byte = v,
                Some(0xd1) if v & 1 == 0 => return MiscEffect::Reset,
                _ => {}
            },
        }
        MiscEffect::None
    }
}

/// Port 0x80 POST-code sink.
#[derive(Debug, Clone, Default)]
pub struct PostPort {
    pub last: u8,
    pub writes: u64,
}

/// Port 0x92 (bit 0 = fast reset, bit 1 = A20) and 0xcf9 (bit 2 = reset CPU).
#[derive(Debug, Clone, Default)]
pub struct ResetPorts {
    port92: u8,
    cf9: u8,
}

impl ResetPorts {
    pub fn handles(port: u16) -> bool {
        matches!(port, 0x92 | 0xcf9)
    }
    pub fn io_read(&mut self, port: u16) -> u8 {
        match port {
            0x92 => self.port92 | 0x02,
            _ => self.cf9,
        }
    }
    pub fn io_write(&mut self, port: u16, v: u8) -> MiscEffect {
        match port {
            0x92 => {
                let rising = v & 1 != 0 && self.port92 & 1 == 0;
                self.port92 = v & 0x03;
                if rising {
                    return MiscEffect::Reset;
                }
            }
            _ => {
                self.cf9 = v & 0x0a;
                if v & 0x04 != 0 {
                    return MiscEffect::Reset;
                }
            }
        }
        MiscEffect::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn i8042_reset_path() {
        let mut k = I8042::default();
        // Linux kb_wait(): status bit 1 must be clear
        assert_eq!(k.io_read(0x64) & 0x02, 0);
        assert_eq!(k.io_write(0x64, 0xaa), MiscEffect::None);
        assert_eq!(k.io_read(0x64) & 1, 1);
        assert_eq!(k.io_read(0x60), 0x55);
        assert_eq!(k.io_write(0x64, 0xfe), MiscEffect::Reset);
        assert_eq!(k.io_write(0x64, 0xd1), MiscEffect::None);
        assert_eq!(k.io_write(0x60, 0xfe), MiscEffect::Reset);
        let mut r = ResetPorts::default();
        assert_eq!(r.io_write(0xcf9, 0x02), MiscEffect::None);
        assert_eq!(r.io_write(0xcf9, 0x06), MiscEffect::Reset);
        assert_eq!(r.io_write(0x92, 0x01), MiscEffect::Reset);
    }
}
