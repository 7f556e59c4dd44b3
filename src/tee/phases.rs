//! Wall time and byte count of each launch phase, for logs and `benches/launch_phases.rs`.

use std::time::{Duration, Instant};

/// The phases of a confidential launch, in launch order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// Mapping guest RAM.
    MemoryAllocation,
    /// Loader: firmware, kernel, initrd, boot structures.
    ImageLoad,
    /// KVM_SEV_INIT2 and memory registration (hardware only does work here).
    VmSetup,
    /// LAUNCH_START / SNP_LAUNCH_START.
    LaunchStart,
    /// LAUNCH_UPDATE_DATA / SNP_LAUNCH_UPDATE of memory.
    UpdateMemory,
    /// LAUNCH_UPDATE_VMSA (or the VMSA updates of SNP_LAUNCH_FINISH in the model).
    UpdateVmsa,
    /// LAUNCH_MEASURE.
    Measure,
    /// LAUNCH_SECRET.
    Secret,
    /// LAUNCH_FINISH / SNP_LAUNCH_FINISH.
    Finish,
}

impl Phase {
    /// Every phase, in order.
    pub const ALL: [Phase; 9] = [
        Phase::MemoryAllocation,
        Phase::ImageLoad,
        Phase::VmSetup,
        Phase::LaunchStart,
        Phase::UpdateMemory,
        Phase::UpdateVmsa,
        Phase::Measure,
        Phase::Secret,
        Phase::Finish,
    ];

    /// A short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Phase::MemoryAllocation => "memory allocation",
            Phase::ImageLoad => "image load",
            Phase::VmSetup => "INIT2 + memory registration",
            Phase::LaunchStart => "LAUNCH_START",
            Phase::UpdateMemory => "UPDATE_DATA / SNP_LAUNCH_UPDATE",
            Phase::UpdateVmsa => "UPDATE_VMSA",
            Phase::Measure => "MEASURE",
            Phase::Secret => "SECRET",
            Phase::Finish => "FINISH",
        }
    }
}

/// One phase's cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhaseSample {
    /// Which phase.
    pub phase: Phase,
    /// Wall time spent in it.
    pub wall: Duration,
    /// Bytes the AMD-SP read or wrote in it (measured memory, VMSAs, secret).
    pub bytes: u64,
}

/// The phases of one launch, in the order they ran.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PhaseTimes {
    /// Samples; a phase that runs in several steps appears once per step.
    pub samples: Vec<PhaseSample>,
}

impl PhaseTimes {
    /// Records `wall` and `bytes` for `phase`.
    pub fn add(&mut self, phase: Phase, wall: Duration, bytes: u64) {
        self.samples.push(PhaseSample { phase, wall, bytes });
    }

    /// Runs `f`, recording its wall time and the byte count it returns with its result.
    pub fn time<T, E>(
        &mut self,
        phase: Phase,
        f: impl FnOnce() -> Result<(T, u64), E>,
    ) -> Result<T, E> {
        let start = Instant::now();
        let (value, bytes) = f()?;
        self.add(phase, start.elapsed(), bytes);
        Ok(value)
    }

    /// Total wall time and bytes of `phase`.
    pub fn total(&self, phase: Phase) -> (Duration, u64) {
        self.samples
            .iter()
            .filter(|s| s.phase == phase)
            .fold((Duration::ZERO, 0), |(w, b), s| (w + s.wall, b + s.bytes))
    }

    /// Whether `phase` ran at all.
    pub fn ran(&self, phase: Phase) -> bool {
        self.samples.iter().any(|s| s.phase == phase)
    }

    /// Appends another record's samples.
    pub fn extend(&mut self, other: &PhaseTimes) {
        self.samples.extend_from_slice(&other.samples);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_up_per_phase() {
        let mut p = PhaseTimes::default();
        p.add(Phase::UpdateMemory, Duration::from_millis(2), 4096);
        p.add(Phase::Measure, Duration::from_millis(1), 0);
        p.add(Phase::UpdateMemory, Duration::from_millis(3), 8192);
        assert_eq!(
            p.total(Phase::UpdateMemory),
            (Duration::from_millis(5), 12288)
        );
        assert!(!p.ran(Phase::Secret));
        let r: Result<u8, ()> = p.time(Phase::Secret, || Ok((7, 16)));
        assert_eq!(r, Ok(7));
        assert_eq!(p.total(Phase::Secret).1, 16);
        let e: Result<u8, &str> = p.time(Phase::Finish, || Err("no"));
        assert_eq!(e, Err("no"));
        assert!(!p.ran(Phase::Finish), "a failed step records nothing");
    }
}
