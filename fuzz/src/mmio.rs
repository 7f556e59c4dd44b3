//! virtio-mmio: sequences of guest register reads and writes (any offset, any width) on the
//! transport with a recording device. Checks the identification registers, that the device
//! is activated only after FEATURES_OK and DRIVER_OK with valid queues and offered features,
//! and never twice without a reset.

use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use krun_sev::devices::virtio::transport::mmio::MmioTransport;
use krun_sev::devices::virtio::{
    read_config_bytes, ActivateContext, VirtioDevice, VirtioError, STATUS_ACKNOWLEDGE,
    STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FAILED, STATUS_FEATURES_OK,
    TRANSPORT_FEATURES,
};
use krun_sev::devices::BusDevice;
use virtio_queue::QueueT;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::queue::memory;

/// Register offsets of the virtio-mmio transport (virtio 1.2, 4.2.2), written out here from
/// the specification rather than taken from the library.
const REGS: &[u64] = &[
    0x000, 0x004, 0x008, 0x00c, 0x010, 0x014, 0x020, 0x024, 0x030, 0x034, 0x038, 0x044, 0x050,
    0x060, 0x064, 0x070, 0x080, 0x084, 0x090, 0x094, 0x0a0, 0x0a4, 0x0ac, 0x0b0, 0x0b4, 0x0fc,
    0x100,
];
const REG_STATUS: u64 = 0x070;
const MAGIC: u32 = 0x7472_6976;
const DEVICE_TYPE: u32 = 42;
const DEVICE_FEATURES: u64 = (1 << 5) | (1 << 29);
const QUEUE_SIZES: [u16; 2] = [16, 8];
const VERSION_1: u64 = 1 << 32;

#[derive(Debug, Arbitrary)]
pub struct Input {
    pub ops: Vec<Op>,
}

#[derive(Debug, Arbitrary)]
pub enum Op {
    Read {
        reg: Reg,
        width: Width,
    },
    Write {
        reg: Reg,
        width: Width,
        value: Value,
    },
    /// A well-formed status write, so the fuzzer reaches activation without guessing bits.
    Status(u8),
    /// Driver features: both selector halves written (bit 32 is VERSION_1).
    Features {
        low: u32,
        high: u32,
    },
    /// A complete, valid driver handshake up to DRIVER_OK (features `features` masked to the
    /// offered ones), so later operations start from an active device.
    Handshake {
        features: u64,
    },
    /// A whole queue set up, as a driver does before DRIVER_OK.
    Queue {
        sel: u8,
        size: u16,
        desc: Value,
        driver: Value,
        device: Value,
        ready: bool,
    },
}

#[derive(Debug, Arbitrary)]
pub enum Reg {
    Known(u8),
    Config(u8),
    Raw(u16),
}

impl Reg {
    fn offset(&self) -> u64 {
        match self {
            Reg::Known(i) => REGS[usize::from(*i) % REGS.len()],
            Reg::Config(o) => 0x100 + u64::from(*o),
            Reg::Raw(o) => u64::from(*o),
        }
    }
}

#[derive(Debug, Arbitrary)]
pub enum Width {
    Four,
    One,
    Two,
    Eight,
    Odd(u8),
}

impl Width {
    fn bytes(&self) -> usize {
        match self {
            Width::Four => 4,
            Width::One => 1,
            Width::Two => 2,
            Width::Eight => 8,
            Width::Odd(n) => usize::from(*n % 17),
        }
    }
}

/// Register values: small ones (queue addresses in RAM, sizes, selectors) or anything.
#[derive(Debug, Arbitrary)]
pub enum Value {
    Small(u16),
    Page(u8),
    Raw(u64),
}

impl Value {
    fn get(&self) -> u64 {
        match self {
            Value::Small(v) => u64::from(*v),
            Value::Page(p) => u64::from(*p) << 12,
            Value::Raw(v) => *v,
        }
    }
}

#[derive(Debug, Default)]
struct Log {
    active: bool,
    activations: usize,
}

struct Recorder {
    log: Arc<Mutex<Log>>,
}

impl VirtioDevice for Recorder {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }
    fn device_features(&self) -> u64 {
        DEVICE_FEATURES
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&[1, 2, 3, 4, 5, 6, 7, 8], offset, data);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), VirtioError> {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        assert!(!log.active, "activated twice without a reset");
        assert_eq!(ctx.queues.len(), QUEUE_SIZES.len());
        for (q, max) in ctx.queues.iter().zip(QUEUE_SIZES) {
            assert!(
                q.is_valid(&*ctx.mem),
                "activated with an invalid queue: {q:?}"
            );
            assert!(q.size() <= max && q.size() > 0, "queue size {}", q.size());
        }
        assert_eq!(ctx.queue_evts.len(), QUEUE_SIZES.len());
        assert_eq!(
            ctx.acked_features & !(DEVICE_FEATURES | TRANSPORT_FEATURES),
            0,
            "acked features that were not offered"
        );
        log.active = true;
        log.activations += 1;
        Ok(())
    }
    fn reset(&mut self) {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).active = false;
    }
}

fn read32(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

fn write32(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

fn write_features(t: &mut MmioTransport, low: u32, high: u32) {
    write32(t, 0x024, 0);
    write32(t, 0x020, low);
    write32(t, 0x024, 1);
    write32(t, 0x020, high);
}

pub fn run(input: &Input) {
    let log = Arc::new(Mutex::new(Log::default()));
    let Ok(irq) = EventFd::new(EFD_NONBLOCK) else {
        return;
    };
    let device = Box::new(Recorder { log: log.clone() });
    let Ok(mut t) = MmioTransport::new(device, Arc::new(memory()), irq) else {
        return;
    };
    let status_bits = STATUS_ACKNOWLEDGE
        | STATUS_DRIVER
        | STATUS_FEATURES_OK
        | STATUS_DRIVER_OK
        | STATUS_FAILED
        | STATUS_DEVICE_NEEDS_RESET;
    for op in input.ops.iter().take(256) {
        let before = log.lock().unwrap_or_else(|e| e.into_inner()).activations;
        match op {
            Op::Read { reg, width } => {
                let mut b = vec![0xa5u8; width.bytes()];
                t.read(reg.offset(), &mut b);
            }
            Op::Write { reg, width, value } => {
                let v = value.get().to_le_bytes();
                let n = width.bytes();
                let mut b = v.to_vec();
                b.resize(n, 0);
                t.write(reg.offset(), &b);
            }
            Op::Status(s) => write32(&mut t, REG_STATUS, u32::from(*s)),
            Op::Handshake { features } => {
                let acked = features & (DEVICE_FEATURES | TRANSPORT_FEATURES) | VERSION_1;
                write32(&mut t, REG_STATUS, 0);
                write32(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE);
                write32(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
                write_features(&mut t, acked as u32, (acked >> 32) as u32);
                let ok = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
                write32(&mut t, REG_STATUS, ok);
                for (sel, size) in QUEUE_SIZES.iter().enumerate() {
                    // Rings one page apart in low RAM.
                    let base = 0x1_0000 + 0x3000 * sel as u32;
                    write32(&mut t, 0x030, sel as u32);
                    write32(&mut t, 0x038, u32::from(*size));
                    for (reg, addr) in [
                        (0x080, base),
                        (0x090, base + 0x1000),
                        (0x0a0, base + 0x2000),
                    ] {
                        write32(&mut t, reg, addr);
                        write32(&mut t, reg + 4, 0);
                    }
                    write32(&mut t, 0x044, 1);
                }
                write32(&mut t, REG_STATUS, ok | STATUS_DRIVER_OK);
                let active = log.lock().unwrap_or_else(|e| e.into_inner()).active;
                assert!(active, "a valid handshake did not activate the device");
            }
            Op::Features { low, high } => write_features(&mut t, *low, *high),
            Op::Queue {
                sel,
                size,
                desc,
                driver,
                device,
                ready,
            } => {
                write32(&mut t, 0x030, u32::from(*sel % 3));
                write32(&mut t, 0x038, u32::from(*size));
                for (reg, v) in [(0x080, desc), (0x090, driver), (0x0a0, device)] {
                    let v = v.get();
                    write32(&mut t, reg, v as u32);
                    write32(&mut t, reg + 4, (v >> 32) as u32);
                }
                write32(&mut t, 0x044, u32::from(*ready));
            }
        }
        assert_eq!(read32(&mut t, 0x000), MAGIC);
        assert_eq!(read32(&mut t, 0x004), 2);
        assert_eq!(read32(&mut t, 0x008), DEVICE_TYPE);
        let status = t.status();
        assert_eq!(status & !status_bits, 0, "status {status:#x}");
        let after = log.lock().unwrap_or_else(|e| e.into_inner()).activations;
        if after > before {
            let need = STATUS_FEATURES_OK | STATUS_DRIVER_OK;
            assert_eq!(status & need, need, "activated at status {status:#x}");
        }
    }
}
