//! Launch cost per phase on the PSP model, for 512 MiB and 4 GiB of guest RAM and each of
//! SEV, SEV-ES (2 vCPUs) and SNP: wall time (median of RUNS) and bytes the AMD-SP reads,
//! plus the ratio 4 GiB / 512 MiB per phase, so that what grows with RAM shows.
//!
//! `cargo bench -p krun-sev --bench launch_phases` (harness = false). A real bundle:
//! `KRUN_SEV_BUNDLE_DIR=build/bundle`; otherwise a synthetic one (an ELF kernel with a
//! 12 MiB image and 4 MiB bss, a 6 MiB incompressible initrd), sized like the real bundle.
//! `KRUN_SEV_BENCH_RUNS` sets the run count (default 5). Results: docs/benchmarks.md.
//! Not covered: LAUNCH_SECRET (needs an owner session; it handles one page) and the
//! hardware's own time (no SEV host here).

use std::sync::Arc;
use std::time::Duration;

use krun_psp_model::ModelIdentity;
use krun_sev::launch::guest;
use krun_sev::launch::host_json::{self, LaunchShape};
use krun_sev::resources::VmResources;
use krun_sev::tee::backend::{FinishParams, LaunchBackend};
use krun_sev::tee::measure::{calculate_with, MeasureInputs, ModelBackend};
use krun_sev::tee::phases::{Phase, PhaseTimes};
use krun_sev::tee::vcpu_model::VcpuModel;
use krun_sev::tee::{cpuid_page, TeeMode};

const KERNEL_GPA: u64 = 0x100_0000;

/// A one-segment ELF64 executable: `image` bytes of pseudo-random code at `KERNEL_GPA`
/// followed by `bss` zero bytes.
fn synthetic_kernel(image: usize, bss: u64) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    f.extend_from_slice(&2u16.to_le_bytes());
    f.extend_from_slice(&0x3eu16.to_le_bytes());
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&KERNEL_GPA.to_le_bytes());
    f.extend_from_slice(&64u64.to_le_bytes());
    f.extend_from_slice(&0u64.to_le_bytes());
    f.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, 1, 64, 0, 0] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    let off = 0x1000u64;
    let filesz = image as u64;
    f.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f.extend_from_slice(&7u32.to_le_bytes());
    for v in [off, KERNEL_GPA, KERNEL_GPA, filesz, filesz + bss, 0x1000] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    f.resize(usize::try_from(off).unwrap_or(0x1000), 0);
    f.extend(noise(image, 1));
    f
}

/// Deterministic incompressible bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[4]
        })
        .collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let runs: usize = std::env::var("KRUN_SEV_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let (kernel, initrd, source) = match std::env::var_os("KRUN_SEV_BUNDLE_DIR") {
        Some(dir) => {
            let b = krun_bundle::Bundle::load(std::path::Path::new(&dir))
                .unwrap_or_else(|e| panic!("cannot load the bundle: {e}"));
            (
                b.kernel,
                b.initrd,
                format!("bundle {}", dir.to_string_lossy()),
            )
        }
        None => (
            synthetic_kernel(12 << 20, 4 << 20),
            noise(6 << 20, 2),
            "synthetic bundle (12 MiB kernel image + 4 MiB bss, 6 MiB initrd)".to_owned(),
        ),
    };
    let identity = Arc::new(ModelIdentity::generate().unwrap_or_else(|e| panic!("{e}")));
    let cmdline = guest::full_cmdline(guest::device_count(false)).unwrap_or_else(|e| panic!("{e}"));
    let vcpus = 2u8;
    println!("launch phases on the PSP model: {source}, {vcpus} vCPUs, median of {runs} runs");
    for mode in [TeeMode::Sev, TeeMode::SevEs, TeeMode::Snp] {
        let cpuid = match mode {
            TeeMode::Snp => Some(
                cpuid_page::from_kvm(vcpus, VcpuModel::default().signature())
                    .or_else(|_| cpuid_page::build(&[]))
                    .unwrap_or_else(|e| panic!("{e}")),
            ),
            _ => None,
        };
        let mut per_size = Vec::new();
        for ram_mib in [512u32, 4096] {
            let shape = LaunchShape {
                vcpus,
                ram_mib,
                vcpu_model: VcpuModel::default(),
                data_disk: false,
            };
            let json = host_json::build(&VmResources::default(), mode, &shape, None);
            let seg = guest::launch_segment(&json, mode).unwrap_or_else(|e| panic!("{e}"));
            let inputs = MeasureInputs {
                mode,
                vcpus,
                ram_mib,
                kernel: &kernel,
                initrd: initrd.clone(),
                segment: &seg.bytes,
                cmdline: &cmdline,
                vcpu_sig: VcpuModel::default().signature(),
                cpuid_page: cpuid.as_deref(),
            };
            let mut samples: Vec<PhaseTimes> = Vec::new();
            for _ in 0..runs {
                let mut psp = ModelBackend::new(identity.clone(), mode);
                let (_, mut phases) =
                    calculate_with(&mut psp, &inputs).unwrap_or_else(|e| panic!("{e}"));
                // FINISH as the launch issues it (the calculator stops at the digest).
                phases
                    .time(Phase::Finish, || {
                        psp.finish(&FinishParams::default()).map(|()| ((), 0))
                    })
                    .unwrap_or_else(|e| panic!("{e}"));
                samples.push(phases);
            }
            per_size.push(samples);
        }
        println!();
        println!("## {}", mode.host_json_name());
        println!(
            "| phase | 512 MiB ms | 512 MiB bytes | 4 GiB ms | 4 GiB bytes | ratio time | ratio bytes |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for phase in Phase::ALL {
            if !per_size[0][0].ran(phase) {
                continue;
            }
            let stat = |samples: &Vec<PhaseTimes>| {
                let t = median(samples.iter().map(|p| p.total(phase).0).collect());
                (t, samples[0].total(phase).1)
            };
            let (t0, b0) = stat(&per_size[0]);
            let (t1, b1) = stat(&per_size[1]);
            let ratio = |a: f64, b: f64| {
                if a > 0.0 {
                    format!("{:.2}", b / a)
                } else {
                    "-".into()
                }
            };
            println!(
                "| {} | {:.3} | {} | {:.3} | {} | {} | {} |",
                phase.name(),
                ms(t0),
                b0,
                ms(t1),
                b1,
                ratio(ms(t0), ms(t1)),
                ratio(b0 as f64, b1 as f64),
            );
        }
    }
}
